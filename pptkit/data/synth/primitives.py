"""Parametric surface patches (rectangles, frusta, discs) and vectorised sampling of them.

Every surface in a synthetic scene is a patch with a parameter square (s, t) in [0, 1]^2:

- rect:    p = o + s*u + t*v                      (u, v orthogonal edges; normal u x v)
- frustum: p = o + x(s)*h*a + r(x)*(cos 2pi t e1 + sin 2pi t e2), r linear from r0 to r1
           (open side surface of a cylinder or cone; x(s) makes s uniform by area)
- disc:    p = o + r0*(2s-1)*e1 + r0*(2t-1)*e2, kept where inside the circle (normal e3)

A `PatchSet` collects patches while furniture is built in a local frame, then is moved into
the room. The samplers work on all patches of a scene at once (no Python loop per point):
`sample_random` (uniform by area), `sample_grid` (cell centres of a regular lattice) and
`mesh_grid` (a triangulated lattice, as a scanner's reconstructed mesh would be).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RECT, FRUSTUM, DISC = 0, 1, 2


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norm, 1e-12)


def _frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to `axis` and to each other."""
    a = _unit(np.asarray(axis, dtype=np.float64))
    helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(np.cross(a, helper))
    return e1, np.cross(a, e1)


@dataclass
class PatchSet:
    """Surface patches in a shared layout; see the module docstring for the parametrisations.

    For a rect e1, e2 are the edge vectors (u, v) and e3 is unused; for a frustum e1, e2 are
    the unit radial frame and e3 the axis scaled by the height; for a disc e1, e2 are the
    unit in-plane frame and e3 the unit normal. `flip` (+1/-1) turns frustum normals inward.
    """

    kind: list[int] = field(default_factory=list)
    o: list[np.ndarray] = field(default_factory=list)
    e1: list[np.ndarray] = field(default_factory=list)
    e2: list[np.ndarray] = field(default_factory=list)
    e3: list[np.ndarray] = field(default_factory=list)
    r0: list[float] = field(default_factory=list)
    r1: list[float] = field(default_factory=list)
    flip: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kind)

    def _add(self, kind, o, e1, e2, e3, r0=0.0, r1=0.0, flip=1.0) -> None:
        self.kind.append(kind)
        self.o.append(np.asarray(o, dtype=np.float64))
        self.e1.append(np.asarray(e1, dtype=np.float64))
        self.e2.append(np.asarray(e2, dtype=np.float64))
        self.e3.append(np.asarray(e3, dtype=np.float64))
        self.r0.append(float(r0))
        self.r1.append(float(r1))
        self.flip.append(float(flip))

    def rect(self, origin, u, v) -> PatchSet:
        """A rectangle from `origin` spanned by edges `u` and `v`; its normal is u x v."""
        self._add(RECT, origin, u, v, np.zeros(3))
        return self

    def box(self, lo, hi, skip: tuple[str, ...] = ()) -> PatchSet:
        """An axis-aligned box's faces with outward normals; `skip` names faces to leave out
        (``-x +x -y +y -z +z``), e.g. a bottom resting on the floor, which no scan sees."""
        x0, y0, z0 = lo
        x1, y1, z1 = hi
        dx, dy, dz = x1 - x0, y1 - y0, z1 - z0
        faces = {
            "-x": ((x0, y0, z0), (0, 0, dz), (0, dy, 0)),
            "+x": ((x1, y0, z0), (0, dy, 0), (0, 0, dz)),
            "-y": ((x0, y0, z0), (dx, 0, 0), (0, 0, dz)),
            "+y": ((x0, y1, z0), (0, 0, dz), (dx, 0, 0)),
            "-z": ((x0, y0, z0), (0, dy, 0), (dx, 0, 0)),
            "+z": ((x0, y0, z1), (dx, 0, 0), (0, dy, 0)),
        }
        for name, (o, u, v) in faces.items():
            if name not in skip:
                self.rect(o, u, v)
        return self

    def frustum(self, base, axis, height: float, r0: float, r1: float, inward: bool = False) -> PatchSet:
        """The side of a cylinder (r0 == r1) or cone frustum from `base` along `axis`."""
        e1, e2 = _frame(axis)
        self._add(FRUSTUM, base, e1, e2, _unit(np.asarray(axis, float)) * height, r0, r1,
                  -1.0 if inward else 1.0)
        return self

    def disc(self, center, normal, radius: float) -> PatchSet:
        """A flat disc facing `normal`."""
        e1, e2 = _frame(normal)
        self._add(DISC, center, e1, e2, _unit(np.asarray(normal, float)), radius)
        return self

    def cylinder(self, base, axis, height: float, radius: float, caps: tuple[bool, bool] = (False, True)) -> PatchSet:
        """A closed-ish cylinder: side plus optional bottom / top caps."""
        a = _unit(np.asarray(axis, float))
        self.frustum(base, a, height, radius, radius)
        if caps[0]:
            self.disc(base, -a, radius)
        if caps[1]:
            self.disc(np.asarray(base, float) + a * height, a, radius)
        return self

    def extend(self, other: PatchSet) -> PatchSet:
        for name in ("kind", "o", "e1", "e2", "e3", "r0", "r1", "flip"):
            getattr(self, name).extend(getattr(other, name))
        return self

    def transformed(self, yaw: float, offset) -> PatchSet:
        """A copy rotated by `yaw` radians about +z, then translated by `offset`."""
        c, s = np.cos(yaw), np.sin(yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        off = np.asarray(offset, dtype=np.float64)
        out = PatchSet(list(self.kind), r0=list(self.r0), r1=list(self.r1), flip=list(self.flip))
        out.o = [rot @ p + off for p in self.o]
        out.e1 = [rot @ p for p in self.e1]
        out.e2 = [rot @ p for p in self.e2]
        out.e3 = [rot @ p for p in self.e3]
        return out

    def arrays(self) -> Patches:
        """Freeze into arrays for sampling."""
        if not self.kind:
            empty3 = np.zeros((0, 3))
            return Patches(np.zeros(0, np.int8), empty3, empty3, empty3, empty3,
                           np.zeros(0), np.zeros(0), np.zeros(0))
        return Patches(np.asarray(self.kind, np.int8), np.stack(self.o), np.stack(self.e1),
                       np.stack(self.e2), np.stack(self.e3), np.asarray(self.r0),
                       np.asarray(self.r1), np.asarray(self.flip))


@dataclass
class Patches:
    """Array form of a PatchSet (one row per patch)."""

    kind: np.ndarray
    o: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    e3: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    flip: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    @staticmethod
    def concat(parts: list[Patches]) -> Patches:
        return Patches(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                         ("kind", "o", "e1", "e2", "e3", "r0", "r1", "flip")))

    def areas(self) -> np.ndarray:
        """Surface area of each patch (m^2)."""
        area = np.zeros(len(self))
        rect = self.kind == RECT
        area[rect] = np.linalg.norm(np.cross(self.e1[rect], self.e2[rect]), axis=1)
        fr = self.kind == FRUSTUM
        h = np.linalg.norm(self.e3[fr], axis=1)
        area[fr] = np.pi * (self.r0[fr] + self.r1[fr]) * np.hypot(h, self.r1[fr] - self.r0[fr])
        disc = self.kind == DISC
        area[disc] = np.pi * self.r0[disc] ** 2
        return area

    def extents(self) -> tuple[np.ndarray, np.ndarray]:
        """Lengths of each patch along s and t (for lattices of a given spacing)."""
        ls, lt = np.zeros(len(self)), np.zeros(len(self))
        rect = self.kind == RECT
        ls[rect] = np.linalg.norm(self.e1[rect], axis=1)
        lt[rect] = np.linalg.norm(self.e2[rect], axis=1)
        fr = self.kind == FRUSTUM
        ls[fr] = np.hypot(np.linalg.norm(self.e3[fr], axis=1), self.r1[fr] - self.r0[fr])
        lt[fr] = 2 * np.pi * np.maximum(self.r0[fr], self.r1[fr])
        disc = self.kind == DISC
        ls[disc] = lt[disc] = 2 * self.r0[disc]
        return ls, lt

    def evaluate(self, idx: np.ndarray, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points and unit normals at parameters (s, t) of patches `idx` (disc points outside
        the circle are returned as they are; callers drop them with `inside_disc`)."""
        kind = self.kind[idx]
        o, e1, e2, e3 = self.o[idx], self.e1[idx], self.e2[idx], self.e3[idx]
        r0, r1 = self.r0[idx], self.r1[idx]
        s2, t2 = s[:, None], t[:, None]
        pts = np.empty((len(idx), 3))
        nrm = np.empty((len(idx), 3))

        m = kind == RECT
        pts[m] = o[m] + s2[m] * e1[m] + t2[m] * e2[m]
        nrm[m] = _unit(np.cross(e1[m], e2[m]))

        m = kind == FRUSTUM
        a, b, sm = r0[m], r1[m], s[m]
        # Area-uniform height fraction: solves (r0 x + (r1 - r0) x^2 / 2) = s (r0 + r1) / 2.
        x = sm * (a + b) / np.maximum(np.sqrt(a * a + (b * b - a * a) * sm) + a, 1e-12)
        radius = a + (b - a) * x
        ang = 2 * np.pi * t[m]
        radial = np.cos(ang)[:, None] * e1[m] + np.sin(ang)[:, None] * e2[m]
        pts[m] = o[m] + x[:, None] * e3[m] + radius[:, None] * radial
        h = np.linalg.norm(e3[m], axis=1, keepdims=True)
        axis = e3[m] / np.maximum(h, 1e-12)
        nrm[m] = _unit(h * radial - (b - a)[:, None] * axis) * self.flip[idx][m][:, None]

        m = kind == DISC
        pts[m] = o[m] + (r0[m] * (2 * s[m] - 1))[:, None] * e1[m] + (r0[m] * (2 * t[m] - 1))[:, None] * e2[m]
        nrm[m] = e3[m]
        return pts, nrm

    def inside_disc(self, idx: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """False for lattice/random parameters that fall outside a disc patch's circle."""
        return (self.kind[idx] != DISC) | ((2 * s - 1) ** 2 + (2 * t - 1) ** 2 <= 1.0)


@dataclass
class Samples:
    """Points sampled from patches, with the patch each came from."""

    coord: np.ndarray  # (N, 3) float64
    normal: np.ndarray  # (N, 3) float64
    patch: np.ndarray  # (N,) int64


def sample_random(patches: Patches, density: np.ndarray | float, rng: np.random.Generator) -> Samples:
    """Points uniformly distributed by area; `density` (points/m^2, scalar or per patch) sets
    the expected count, drawn per patch from a Poisson law."""
    counts = rng.poisson(patches.areas() * density * _disc_oversample(patches))
    idx = np.repeat(np.arange(len(patches)), counts)
    s, t = rng.random(len(idx)), rng.random(len(idx))
    keep = patches.inside_disc(idx, s, t)
    idx, s, t = idx[keep], s[keep], t[keep]
    pts, nrm = patches.evaluate(idx, s, t)
    return Samples(pts, nrm, idx)


def _disc_oversample(patches: Patches) -> np.ndarray:
    """Discs are sampled on their bounding square, so draw 4/pi more and reject the corners."""
    return np.where(patches.kind == DISC, 4 / np.pi, 1.0)


def _lattice_shape(patches: Patches, spacing: float, corners: bool) -> tuple[np.ndarray, np.ndarray]:
    ls, lt = patches.extents()
    nu = np.maximum(np.ceil(ls / spacing).astype(np.int64), 1)
    nv = np.maximum(np.ceil(lt / spacing).astype(np.int64), 3 * (patches.kind == FRUSTUM))
    nv = np.maximum(nv, 1)
    return (nu + 1, nv + 1) if corners else (nu, nv)


def _lattice(nu: np.ndarray, nv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch index and (i, j) lattice coordinates of every lattice node, vectorised."""
    counts = nu * nv
    idx = np.repeat(np.arange(len(nu)), counts)
    local = np.arange(len(idx)) - np.repeat(np.cumsum(counts) - counts, counts)
    return idx, local // nv[idx], local % nv[idx]


def sample_grid(patches: Patches, spacing: float) -> Samples:
    """Cell centres of a regular lattice on every patch: clean, evenly spaced points."""
    nu, nv = _lattice_shape(patches, spacing, corners=False)
    idx, i, j = _lattice(nu, nv)
    s, t = (i + 0.5) / nu[idx], (j + 0.5) / nv[idx]
    keep = patches.inside_disc(idx, s, t)
    idx, s, t = idx[keep], s[keep], t[keep]
    pts, nrm = patches.evaluate(idx, s, t)
    return Samples(pts, nrm, idx)


def mesh_grid(patches: Patches, spacing: float) -> tuple[Samples, np.ndarray]:
    """A triangulated lattice per patch: vertices (as Samples) and (F, 3) int faces.

    Each lattice cell gives two triangles; disc cells with a corner outside the circle are
    dropped along with the vertices no face uses.
    """
    nu, nv = _lattice_shape(patches, spacing, corners=True)
    idx, i, j = _lattice(nu, nv)
    s, t = i / (nu[idx] - 1), j / (nv[idx] - 1)
    # Cells: every node that is not on the last row or column is a cell's first corner.
    cell = (i < nu[idx] - 1) & (j < nv[idx] - 1)
    a = np.nonzero(cell)[0]
    b = a + 1
    c = a + nv[idx[a]]
    d = c + 1
    inside = patches.inside_disc(idx, s, t)
    ok = inside[a] & inside[b] & inside[c] & inside[d]
    a, b, c, d = a[ok], b[ok], c[ok], d[ok]
    faces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    # Keep only vertices some face uses, renumbered in order.
    used = np.zeros(len(idx), dtype=bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    idx, s, t = idx[used], s[used], t[used]
    pts, nrm = patches.evaluate(idx, s, t)
    return Samples(pts, nrm, idx), remap[faces]
