"""Furniture made of primitives, built in a local frame and sized by the style's conventions.

Local frame: the footprint is centred on the origin on the floor (z = 0), width along x,
depth along y, the front faces -y and the back (+y) goes against a wall. Every builder
returns a `Furniture`: its parts (one instance each, e.g. a bed and its pillows) and its
footprint. Faces that no scanner would see (a bottom on the floor, a back against the wall)
go to `hidden`, which only styles with back-face artefacts sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pptkit.data.synth.primitives import PatchSet
from pptkit.data.synth.styles import StyleTraits

UP = (0.0, 0.0, 1.0)


@dataclass
class Part:
    """One instance: a furniture kind and its visible and hidden surfaces."""

    kind: str
    visible: PatchSet = field(default_factory=PatchSet)
    hidden: PatchSet = field(default_factory=PatchSet)

    def box(self, lo, hi, hide: tuple[str, ...] = ()) -> Part:
        """Box faces; those named in `hide` go to the hidden set."""
        self.visible.box(lo, hi, skip=hide)
        faces = ("-x", "+x", "-y", "+y", "-z", "+z")
        self.hidden.box(lo, hi, skip=tuple(f for f in faces if f not in hide))
        return self

    def transformed(self, yaw: float, offset) -> Part:
        return Part(self.kind, self.visible.transformed(yaw, offset), self.hidden.transformed(yaw, offset))


@dataclass
class Furniture:
    """Parts in the local frame, and the footprint (width along x, depth along y, height)."""

    parts: list[Part]
    width: float
    depth: float
    height: float
    top: float = 0.0  # height of a surface things can stand on (tables, counters, ...)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _legs(part: Part, w: float, d: float, h: float, style: str, inset: float, thick: float) -> None:
    """Four legs (round or square) under a top of size w x d at height h."""
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (w / 2 - inset), sy * (d / 2 - inset)
            if style == "round":
                part.visible.cylinder((x, y, 0.0), UP, h, thick / 2, caps=(False, False))
            else:
                part.box((x - thick / 2, y - thick / 2, 0.0), (x + thick / 2, y + thick / 2, h),
                         hide=("-z", "+z"))


def table(rng: np.random.Generator, traits: StyleTraits, kind: str = "table",
          size: tuple[float, float] | None = None) -> Furniture:
    """A table: a top slab on legs in the style's convention (round, square + panel, panels)."""
    w, d = size if size else (_u(rng, 0.9, 1.8), _u(rng, 0.7, 1.0))
    h = _u(rng, traits.table_height.lo, traits.table_height.hi)
    if kind == "coffee_table":
        h *= 0.55
    t = 0.035
    part = Part(kind).box((-w / 2, -d / 2, h - t), (w / 2, d / 2, h))
    if traits.table_legs == "panel":
        for sx in (-1, 1):
            x = sx * (w / 2 - 0.04)
            part.box((x - 0.02, -d / 2 + 0.02, 0.0), (x + 0.02, d / 2 - 0.02, h - t), hide=("-z", "+z"))
    else:
        _legs(part, w, d, h - t, traits.table_legs, 0.06, 0.05)
        if traits.table_legs == "square" and kind != "coffee_table":
            part.box((-w / 2 + 0.08, d / 2 - 0.1, h - 0.4), (w / 2 - 0.08, d / 2 - 0.08, h - t))
    return Furniture([part], w, d, h, top=h)


def desk(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    """A desk against a wall: a table, a drawer pedestal in some styles, a monitor on top."""
    w, d = _u(rng, 1.1, 1.6), _u(rng, 0.6, 0.8)
    base = table(rng, traits, "desk", (w, d))
    parts = base.parts
    h = base.height
    if traits.desk_pedestal:
        side = rng.choice([-1, 1])
        x0 = side * (w / 2 - 0.05)
        x1 = x0 - side * 0.42
        parts[0].box((min(x0, x1), -d / 2 + 0.03, 0.0), (max(x0, x1), d / 2 - 0.02, h - 0.035),
                     hide=("-z", "+z", "+y"))
    if rng.random() < 0.8:
        mw = _u(rng, 0.45, 0.65)
        mon = Part("monitor")
        mon.box((-0.1, 0.1, h), (0.1, 0.3, h + 0.02), hide=("-z",))
        mon.box((-0.02, 0.22, h + 0.02), (0.02, 0.25, h + 0.15))
        mon.box((-mw / 2, 0.18, h + 0.12), (mw / 2, 0.21, h + 0.12 + mw * 0.6))
        parts.append(mon)
    return Furniture(parts, w, d, h, top=h)


def chair(rng: np.random.Generator, traits: StyleTraits, kind: str = "chair") -> Furniture:
    """A chair with four legs, an office chair on a star base, or an upholstered armchair."""
    seat = _u(rng, traits.seat_height.lo, traits.seat_height.hi)
    part = Part(kind)
    if kind == "armchair":
        w, d = _u(rng, 0.75, 0.95), _u(rng, 0.75, 0.9)
        seat -= 0.04
        part.box((-w / 2 + 0.14, -d / 2, 0.0), (w / 2 - 0.14, d / 2 - 0.18, seat), hide=("-z",))
        part.box((-w / 2, d / 2 - 0.18, 0.0), (w / 2, d / 2, seat + 0.45), hide=("-z",))
        for sx in (-1, 1):
            x = sx * (w / 2 - 0.07)
            part.box((x - 0.07, -d / 2, 0.0), (x + 0.07, d / 2 - 0.18, seat + 0.2), hide=("-z",))
        return Furniture([part], w, d, seat + 0.45)
    w, d = _u(rng, 0.42, 0.52), _u(rng, 0.42, 0.52)
    part.box((-w / 2, -d / 2, seat - 0.05), (w / 2, d / 2, seat))
    back = _u(rng, 0.35, 0.5)
    part.box((-w / 2, d / 2 - 0.04, seat), (w / 2, d / 2, seat + back))
    if kind == "office_chair":
        part.visible.cylinder((0.0, 0.0, 0.08), UP, seat - 0.13, 0.025, caps=(False, False))
        for k in range(5):
            a = 2 * np.pi * k / 5
            part.visible.extend(PatchSet().box((0.0, -0.02, 0.04), (0.3, 0.02, 0.08)).transformed(a, (0, 0, 0)))
    else:
        _legs(part, w, d, seat - 0.05, traits.table_legs if traits.table_legs != "panel" else "square",
              0.03, 0.03)
    return Furniture([part], w, d, seat + back)


def sofa(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    """A two- or three-seat sofa: base, back, arms and seat cushions."""
    w, d = _u(rng, 1.5, 2.3), _u(rng, 0.8, 1.0)
    seat = traits.seat_height.lo - 0.02
    part = Part("sofa")
    arm = 0.18
    part.box((-w / 2 + arm, -d / 2, 0.0), (w / 2 - arm, d / 2 - 0.2, seat - 0.1), hide=("-z",))
    seats = 2 if w < 1.9 else 3
    cw = (w - 2 * arm) / seats
    for k in range(seats):
        x0 = -w / 2 + arm + k * cw
        part.box((x0 + 0.01, -d / 2, seat - 0.1), (x0 + cw - 0.01, d / 2 - 0.2, seat), hide=("-z",))
    part.box((-w / 2, d / 2 - 0.2, 0.0), (w / 2, d / 2, seat + 0.42), hide=("-z", "+y"))
    for sx in (-1, 1):
        x = sx * (w / 2 - arm / 2)
        part.box((x - arm / 2, -d / 2, 0.0), (x + arm / 2, d / 2 - 0.2, seat + 0.18), hide=("-z",))
    return Furniture([part], w, d, seat + 0.42)


def bed(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    """A bed, headboard against the wall (+y), with one or two pillows."""
    w = float(rng.choice([0.95, 1.45, 1.65, 1.85]))
    d = _u(rng, 1.95, 2.15)
    frame = Part("bed")
    frame.box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, 0.3), hide=("-z",))
    frame.box((-w / 2 + 0.03, -d / 2 + 0.03, 0.3), (w / 2 - 0.03, d / 2 - 0.08, 0.52), hide=("-z",))
    frame.box((-w / 2, d / 2 - 0.08, 0.3), (w / 2, d / 2, _u(rng, 0.9, 1.2)), hide=("+y", "-z"))
    parts = [frame]
    n = 1 if w < 1.2 else 2
    pw = (w - 0.2) / n
    for k in range(n):
        x0 = -w / 2 + 0.1 + k * pw
        parts.append(Part("pillow").box((x0 + 0.03, d / 2 - 0.5, 0.52), (x0 + pw - 0.03, d / 2 - 0.12, 0.64),
                                        hide=("-z",)))
    return Furniture(parts, w, d, 1.0)


def cabinet(rng: np.random.Generator, traits: StyleTraits, kind: str = "cabinet") -> Furniture:
    """A closed cabinet (tall, standard or a sideboard on legs, per style), handles in front."""
    w, d = _u(rng, 0.6, 1.6), _u(rng, 0.4, 0.6)
    h = _u(rng, traits.cabinet_height.lo, traits.cabinet_height.hi)
    part = Part(kind)
    z0 = 0.0
    if traits.cabinet_on_legs:
        z0 = 0.15
        _legs(part, w, d, z0, "round", 0.05, 0.04)
    part.box((-w / 2, -d / 2, z0), (w / 2, d / 2, h), hide=("+y",) + (() if z0 else ("-z",)))
    doors = max(1, round(w / 0.5))
    for k in range(doors):
        x = -w / 2 + (k + 0.5) * w / doors + 0.15 * (1 if k % 2 else -1)
        part.box((x - 0.01, -d / 2 - 0.025, z0 + (h - z0) * 0.5), (x + 0.01, -d / 2, z0 + (h - z0) * 0.5 + 0.12),
                 hide=("+y",))
    return Furniture([part], w, d, h, top=h)


def bookshelf(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    """An open shelf unit with a back panel and rows of books."""
    w, d = _u(rng, 0.7, 1.4), _u(rng, 0.28, 0.38)
    h = _u(rng, 0.8, 1.2) if traits.name == "structured3d" else _u(rng, 1.6, 2.1)
    shelf = Part("bookshelf")
    t = 0.02
    shelf.box((-w / 2, -d / 2, 0.0), (-w / 2 + t, d / 2, h), hide=("-z",))
    shelf.box((w / 2 - t, -d / 2, 0.0), (w / 2, d / 2, h), hide=("-z",))
    shelf.visible.rect((-w / 2 + t, d / 2 - t, 0.0), (w - 2 * t, 0, 0), (0, 0, h))
    levels = max(2, int(h / 0.35))
    parts = [shelf]
    for k in range(levels + 1):
        z = k * (h - t) / levels
        shelf.box((-w / 2 + t, -d / 2, z), (w / 2 - t, d / 2 - t, z + t), hide=("-z",) if k == 0 else ())
        if k < levels and rng.random() < 0.7:
            fill = _u(rng, 0.3, 0.9) * (w - 2 * t)
            x0 = -w / 2 + t + _u(rng, 0, w - 2 * t - fill)
            bh = _u(rng, 0.18, 0.28)
            parts.append(Part("books").box((x0, -d / 2 + 0.04, z + t), (x0 + fill, d / 2 - t, z + t + bh),
                                           hide=("-z", "+y")))
    return Furniture(parts, w, d, h)


def kitchen_run(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    """Lower kitchen cabinets under a counter top, with a sink basin set into it."""
    w, d = _u(rng, 1.6, 3.0), 0.6
    h = 0.9
    cab = Part("kitchen_cabinet").box((-w / 2, -d / 2 + 0.05, 0.1), (w / 2, d / 2, h - 0.04), hide=("+y", "-z"))
    cab.box((-w / 2, -d / 2 + 0.1, 0.0), (w / 2, d / 2, 0.1), hide=("+y", "-z", "+z"))
    top = Part("counter").box((-w / 2, -d / 2 - 0.02, h - 0.04), (w / 2, d / 2, h), hide=("+y",))
    sx = _u(rng, -w / 2 + 0.4, w / 2 - 0.4)
    sink = Part("sink")
    sink.box((sx - 0.3, -0.2, h - 0.18), (sx + 0.3, 0.2, h - 0.17))
    sink.visible.frustum((sx, 0.2, h), (0, 1, 0), 0.05, 0.015, 0.015)
    sink.visible.frustum((sx, 0.25, h), UP, 0.25, 0.015, 0.015)
    return Furniture([cab, top, sink], w, d, h, top=h)


def refrigerator(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    w, d, h = _u(rng, 0.6, 0.9), _u(rng, 0.6, 0.75), _u(rng, 1.7, 1.95)
    part = Part("refrigerator").box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, h), hide=("-z", "+y"))
    part.box((w / 2 - 0.1, -d / 2 - 0.04, h * 0.4), (w / 2 - 0.07, -d / 2, h * 0.9), hide=("+y",))
    return Furniture([part], w, d, h)


def toilet(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    """A toilet: pedestal, bowl, seat ring, tank against the wall."""
    part = Part("toilet")
    part.visible.frustum((0.0, -0.05, 0.0), UP, 0.28, 0.13, 0.17)
    part.visible.frustum((0.0, -0.08, 0.28), UP, 0.12, 0.19, 0.2)
    part.visible.disc((0.0, -0.08, 0.41), UP, 0.2)
    part.box((-0.2, 0.15, 0.4), (0.2, 0.35, 0.78), hide=("+y",))
    return Furniture([part], 0.42, 0.7, 0.78)


def pedestal_sink(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    part = Part("sink")
    part.visible.cylinder((0.0, 0.05, 0.0), UP, 0.68, 0.08, caps=(False, False))
    part.box((-0.28, -0.22, 0.68), (0.28, 0.22, 0.85), hide=("+y",))
    part.visible.frustum((0.0, 0.15, 0.85), UP, 0.15, 0.015, 0.015)
    return Furniture([part], 0.56, 0.44, 0.85)


def bathtub(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    """A bathtub (outer walls, inner walls, bottom) with a pleated shower curtain along its front."""
    w, d, h = _u(rng, 1.5, 1.75), _u(rng, 0.7, 0.8), 0.55
    tub = Part("bathtub")
    tub.box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, h), hide=("-z", "+y", "+z"))
    t = 0.06
    # Rim and the inside, facing inward.
    tub.visible.rect((-w / 2, -d / 2, h), (w, 0, 0), (0, t, 0))
    tub.visible.rect((-w / 2, d / 2 - t, h), (w, 0, 0), (0, t, 0))
    tub.visible.rect((-w / 2, -d / 2 + t, h), (t, 0, 0), (0, d - 2 * t, 0))
    tub.visible.rect((w / 2 - t, -d / 2 + t, h), (t, 0, 0), (0, d - 2 * t, 0))
    inner = PatchSet().box((-w / 2 + t, -d / 2 + t, 0.1), (w / 2 - t, d / 2 - t, h), skip=("+z",))
    inner.o, inner.e1, inner.e2 = inner.o, inner.e2, inner.e1  # swap edges: normals point inside
    tub.visible.extend(inner)
    parts = [tub]
    if rng.random() < 0.7:
        parts.append(curtain(rng, w, 1.9, -d / 2, h + 0.05, "shower_curtain"))
    return Furniture(parts, w, d, h)


def curtain(rng: np.random.Generator, width: float, height: float, y: float, z0: float,
            kind: str = "curtain") -> Part:
    """A pleated curtain hanging in the x-z plane at depth `y`: a zig-zag of narrow strips."""
    pleat = 0.08
    n = max(2, int(round(width / pleat)))
    step = width / n
    depth = 0.04
    part = Part(kind)
    for k in range(n):
        x0 = -width / 2 + k * step
        y0 = y + (depth if k % 2 else 0.0)
        y1 = y + (0.0 if k % 2 else depth)
        part.visible.rect((x0, y0, z0), (step, y1 - y0, 0.0), (0.0, 0.0, height))
    return part


def trash_can(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    r, h = _u(rng, 0.13, 0.2), _u(rng, 0.35, 0.6)
    part = Part("trash_can")
    part.visible.frustum((0.0, 0.0, 0.0), UP, h, r * 0.85, r)
    part.visible.frustum((0.0, 0.0, 0.02), UP, h - 0.02, r * 0.8, r * 0.95, inward=True)
    return Furniture([part], 2 * r, 2 * r, h)


def floor_lamp(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    h = _u(rng, 1.4, 1.8)
    part = Part("lamp")
    part.visible.disc((0.0, 0.0, 0.02), UP, 0.15)
    part.visible.frustum((0.0, 0.0, 0.0), UP, 0.02, 0.15, 0.15)
    part.visible.cylinder((0.0, 0.0, 0.02), UP, h - 0.3, 0.012, caps=(False, False))
    part.visible.frustum((0.0, 0.0, h - 0.3), UP, 0.3, 0.22, 0.14)
    return Furniture([part], 0.44, 0.44, h)


def storage_box(rng: np.random.Generator, traits: StyleTraits) -> Furniture:
    w, d, h = _u(rng, 0.25, 0.6), _u(rng, 0.25, 0.5), _u(rng, 0.2, 0.5)
    return Furniture([Part("box").box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, h), hide=("-z",))], w, d, h)


def low_chest(rng: np.random.Generator, traits: StyleTraits, kind: str) -> Furniture:
    """A nightstand or a dresser: a box with drawer fronts."""
    if kind == "nightstand":
        w, d, h = _u(rng, 0.4, 0.55), _u(rng, 0.35, 0.45), _u(rng, 0.45, 0.6)
    else:
        w, d, h = _u(rng, 0.9, 1.5), _u(rng, 0.45, 0.55), _u(rng, 0.75, 1.1)
    part = Part(kind).box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, h), hide=("-z", "+y"))
    drawers = max(2, int(h / 0.25))
    for k in range(drawers):
        z = (k + 0.5) * h / drawers
        part.box((-0.06, -d / 2 - 0.02, z - 0.01), (0.06, -d / 2, z + 0.01), hide=("+y",))
    return Furniture([part], w, d, h, top=h)


def wall_panel(rng: np.random.Generator, kind: str, w: float, h: float, z0: float, thick: float) -> Part:
    """A thin box on the wall (picture, board, mirror, tv), built in the wall's frame: x along
    the wall, the wall surface at y = 0 and the room towards -y; its back is hidden."""
    part = Part(kind).box((-w / 2, -thick, z0), (w / 2, 0.0, z0 + h), hide=("+y",))
    if kind == "board":
        part.box((-w / 2, -thick - 0.06, z0 - 0.03), (w / 2, -thick, z0), hide=("+y",))
    return part


def radiator(rng: np.random.Generator, w: float) -> Part:
    part = Part("radiator")
    fins = max(3, int(w / 0.1))
    for k in range(fins):
        x = -w / 2 + (k + 0.5) * w / fins
        part.box((x - 0.012, -0.12, 0.12), (x + 0.012, -0.04, 0.7), hide=())
    return part


BUILDERS: dict[str, Callable[[np.random.Generator, StyleTraits], Furniture]] = {
    "table": table,
    "coffee_table": lambda rng, tr: table(rng, tr, "coffee_table", (_u(rng, 0.8, 1.2), _u(rng, 0.45, 0.65))),
    "desk": desk,
    "chair": chair,
    "office_chair": lambda rng, tr: chair(rng, tr, "office_chair"),
    "armchair": lambda rng, tr: chair(rng, tr, "armchair"),
    "sofa": sofa,
    "bed": bed,
    "cabinet": cabinet,
    "bookshelf": bookshelf,
    "kitchen_run": kitchen_run,
    "refrigerator": refrigerator,
    "toilet": toilet,
    "sink": pedestal_sink,
    "bathtub": bathtub,
    "trash_can": trash_can,
    "lamp": floor_lamp,
    "box": storage_box,
    "nightstand": lambda rng, tr: low_chest(rng, tr, "nightstand"),
    "dresser": lambda rng, tr: low_chest(rng, tr, "dresser"),
}
