"""Memory-based copy-paste: a small memory of old-class object instances, pasted into new scenes.

`build_memory` cuts up to B instances per class out of a labelled scene store (an instance is
the voxels that share an instance id and its majority class), keeping each instance's points,
colours, normals and class. `CopyPaste` is a training transform that pastes instances from the
memory into a scene: standing on the scene's floor, with a random yaw and scale, at a place
where none of its voxels falls on an occupied voxel of the scene (or of an earlier paste). The
pasted rows carry their class in "segment", so old classes keep real labels in scenes whose own
points have none.

The floor is found without labels: the lowest `floor_band` metres of the rows whose normal
points up (all rows when the scene has no normals).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pptkit.data.transforms import SceneDict, affine_points, rotation_matrix


@dataclass
class MemoryBank:
    """Instances stored back to back: instance i's rows are offsets[i]:offsets[i + 1].

    Coordinates are relative to the instance's footprint centre (x, y) and its lowest point (z).
    `labels` are class indices of the label space the memory serves.
    """

    coord: np.ndarray  # (P, 3) float32
    color: np.ndarray  # (P, 3) uint8
    normal: np.ndarray  # (P, 3) float32
    offsets: np.ndarray  # (I + 1,) int64
    labels: np.ndarray  # (I,) int64
    sources: list[str]  # "scene:instance" of each instance

    def __len__(self) -> int:
        return len(self.labels)

    def instance(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(coord, color, normal) of instance i."""
        rows = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        return self.coord[rows], self.color[rows], self.normal[rows]

    def to_arrays(self) -> dict[str, np.ndarray | list[str]]:
        """Plain arrays (and the source list), for a checkpoint-safe file."""
        return {"coord": self.coord, "color": self.color, "normal": self.normal, "offsets": self.offsets,
                "labels": self.labels, "sources": list(self.sources)}

    @classmethod
    def from_arrays(cls, arrays: Mapping) -> MemoryBank:
        return cls(np.asarray(arrays["coord"], np.float32), np.asarray(arrays["color"], np.uint8),
                   np.asarray(arrays["normal"], np.float32), np.asarray(arrays["offsets"], np.int64),
                   np.asarray(arrays["labels"], np.int64), list(arrays["sources"]))

    @classmethod
    def concatenate(cls, banks: Sequence[MemoryBank]) -> MemoryBank:
        banks = [b for b in banks if len(b)]
        if not banks:
            return empty_memory()
        sizes = np.concatenate([np.diff(b.offsets) for b in banks])
        return cls(np.concatenate([b.coord for b in banks]), np.concatenate([b.color for b in banks]),
                   np.concatenate([b.normal for b in banks]), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                   np.concatenate([b.labels for b in banks]), [s for b in banks for s in b.sources])

    def keep(self, indices: Sequence[int]) -> MemoryBank:
        """A memory with only the given instances, in that order."""
        parts = [self.instance(i) for i in indices]
        sizes = [len(p[0]) for p in parts]
        return MemoryBank(
            np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 3), np.float32),
            np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 3), np.uint8),
            np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, 3), np.float32),
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            self.labels[list(indices)].astype(np.int64), [self.sources[i] for i in indices])

    def per_class(self, limit: int) -> MemoryBank:
        """At most `limit` instances of each class (the first ones stored)."""
        seen: dict[int, int] = {}
        chosen = []
        for i, label in enumerate(self.labels.tolist()):
            if seen.get(label, 0) < limit:
                seen[label] = seen.get(label, 0) + 1
                chosen.append(i)
        return self.keep(chosen)


def empty_memory() -> MemoryBank:
    return MemoryBank(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.float32),
                      np.zeros(1, np.int64), np.zeros(0, np.int64), [])


def build_memory(scenes: Iterable[SceneDict], class_map: Mapping[int, int], per_class: int, seed: int,
                 min_rows: int = 20, max_extent: float = 2.5) -> MemoryBank:
    """Up to `per_class` instances of every class in `class_map` (store label -> memory label).

    Candidates are (scene, instance id) groups with at least `min_rows` voxels of one class whose
    horizontal and vertical extents are at most `max_extent` metres (walls and floors are not
    objects to paste); B of them per class are drawn at random with `seed`, so the memory
    depends on the store and the seed only.
    """
    candidates: dict[int, list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]]] = {c: [] for c in class_map}
    for scene in scenes:
        segment, instance = np.asarray(scene["segment"]), np.asarray(scene["instance"])
        for label in np.unique(segment):
            if int(label) not in class_map:
                continue
            of_class = segment == label
            for inst in np.unique(instance[of_class]):
                if inst < 0:
                    continue
                rows = np.flatnonzero(of_class & (instance == inst))
                if len(rows) < min_rows:
                    continue
                coord = scene["coord"][rows]
                extent = coord.max(axis=0) - coord.min(axis=0)
                if extent.max() > max_extent:
                    continue
                candidates[int(label)].append((f"{scene['name']}:{int(inst)}", int(class_map[int(label)]),
                                               coord, scene["color"][rows], scene["normal"][rows]))
    parts = []
    for label in sorted(candidates):
        found = candidates[label]
        rng = np.random.default_rng([seed, label])
        for k in sorted(rng.permutation(len(found))[:per_class].tolist()):
            parts.append(found[k])
    if not parts:
        return empty_memory()
    coords = []
    for _, _, coord, _, _ in parts:
        low, high = coord.min(axis=0), coord.max(axis=0)
        anchor = np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]], dtype=np.float32)
        coords.append((coord - anchor).astype(np.float32))
    sizes = [len(c) for c in coords]
    return MemoryBank(np.concatenate(coords), np.concatenate([p[3] for p in parts]).astype(np.uint8),
                      np.concatenate([p[4] for p in parts]).astype(np.float32),
                      np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                      np.array([p[1] for p in parts], dtype=np.int64), [p[0] for p in parts])


def _sorted_set(values: np.ndarray) -> np.ndarray:
    """The distinct values, ascending (a plain sort: faster than np.unique's hashing here)."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def _contains(sorted_set: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which `values` are in `sorted_set` (ascending, distinct)."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def _keys(coord: np.ndarray, grid: float) -> np.ndarray:
    """One int64 per voxel of edge `grid` (21 bits per axis around the origin)."""
    cell = np.floor(coord / grid).astype(np.int64) + (1 << 20)
    return (cell[:, 0] << 42) | (cell[:, 1] << 21) | cell[:, 2]


class CopyPaste:
    """Paste up to `max_instances` memory instances into a scene, each on its floor, never
    overlapping an occupied voxel of edge `grid_size`; applied with probability `p`.

    Instances are drawn class-balanced (a class, then one of its instances). Each gets a yaw
    uniform in [0, 2 pi) and a scale uniform in `scale`; up to `tries` random floor positions
    are tried, and an instance that fits nowhere is skipped. A position fits when no pasted
    voxel is occupied and at least `support` of its footprint cells lie over floor cells (so it
    stands inside the room). Pasted rows get their class in "segment", a fresh instance id in
    "instance" and, when the scene has "superpoint" ids, one fresh superpoint per instance (and
    "patch" -1: no encoder patch).
    "grid_coord" is dropped: the chain's GridSample recomputes it for every row.
    """

    def __init__(self, memory: MemoryBank, grid_size: float, max_instances: int = 3, p: float = 1.0,
                 scale: tuple[float, float] = (0.9, 1.1), tries: int = 20, support: float = 0.8,
                 floor_band: float = 0.1):
        if grid_size <= 0:
            raise ValueError(f"grid_size must be positive, got {grid_size}")
        self.memory, self.grid_size, self.max_instances, self.p = memory, grid_size, max_instances, p
        self.scale, self.tries, self.support, self.floor_band = scale, tries, support, floor_band
        self.classes = np.unique(memory.labels)

    def floor_rows(self, data: SceneDict) -> np.ndarray:
        """Rows of the scene taken as floor: the lowest band of upward-facing rows."""
        coord = data["coord"]
        normal = np.asarray(data.get("normal", np.zeros_like(coord)))
        up = normal[:, 2] > 0.8
        if not up.any():
            up = np.ones(len(coord), dtype=bool)
        low = np.percentile(coord[up, 2], 1.0)
        return np.flatnonzero(up & (coord[:, 2] <= low + self.floor_band))

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        if len(self.memory) == 0 or rng.random() >= self.p:
            return data
        count = int(rng.integers(1, self.max_instances + 1))
        floor = self.floor_rows(data)
        coord = data["coord"]
        occupied = _sorted_set(_keys(coord, self.grid_size))
        floor_cells = _sorted_set(_keys(coord[floor] * np.array([1, 1, 0], np.float32), self.grid_size))
        pasted: list[tuple[int, np.ndarray, np.ndarray]] = []
        for _ in range(count):
            label = self.classes[rng.integers(len(self.classes))]
            choices = np.flatnonzero(self.memory.labels == label)
            index = int(choices[rng.integers(len(choices))])
            placed = self._place(index, data, floor, occupied, floor_cells, rng)
            if placed is None:
                continue
            new_coord, new_normal = placed
            occupied = _sorted_set(np.concatenate([occupied, _keys(new_coord, self.grid_size)]))
            pasted.append((index, new_coord, new_normal))
        if not pasted:
            return data
        return self._append(data, pasted)

    def _place(self, index: int, data: SceneDict, floor: np.ndarray, occupied: np.ndarray,
               floor_cells: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        coord, _, normal = self.memory.instance(index)
        matrix = rotation_matrix("z", float(rng.uniform(0.0, 2 * math.pi)))
        factor = float(rng.uniform(*self.scale))
        shaped = affine_points(coord, matrix * factor, np.zeros(3))
        turned = affine_points(normal, matrix, np.zeros(3))
        for _ in range(self.tries):
            at = data["coord"][floor[rng.integers(len(floor))]]
            # The lowest pasted voxel sits one voxel above the floor row it stands on.
            offset = np.array([at[0], at[1], at[2] + self.grid_size], dtype=np.float32)
            moved = shaped + offset
            if _contains(occupied, _keys(moved, self.grid_size)).any():
                continue
            footprint = _sorted_set(_keys(moved * np.array([1, 1, 0], np.float32), self.grid_size))
            if _contains(floor_cells, footprint).mean() < self.support:
                continue
            return moved, turned
        return None

    def _append(self, data: SceneDict, pasted: list[tuple[int, np.ndarray, np.ndarray]]) -> SceneDict:
        data = {key: value for key, value in data.items() if key != "grid_coord"}  # GridSample remakes it
        num_rows = len(data["coord"])
        per_row = [key for key, value in data.items()
                   if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == num_rows]
        next_instance = int(np.max(data["instance"], initial=-1)) + 1 if "instance" in data else 0
        next_superpoint = int(np.max(data["superpoint"], initial=-1)) + 1 if "superpoint" in data else 0
        parts: dict[str, list[np.ndarray]] = {key: [data[key]] for key in per_row}
        for k, (index, coord, normal) in enumerate(pasted):
            n = len(coord)
            _, color, _ = self.memory.instance(index)
            values = {"coord": coord, "normal": normal, "color": color,
                      "segment": np.full(n, self.memory.labels[index]),
                      "instance": np.full(n, next_instance + k), "superpoint": np.full(n, next_superpoint + k),
                      "patch": np.full(n, -1)}  # pasted rows have no encoder patch
            for key in per_row:
                if key not in values:
                    raise ValueError(f"cannot paste into a scene with per-row entry '{key}'")
                parts[key].append(values[key].astype(data[key].dtype, copy=False))
        return {**data, **{key: np.concatenate(arrays, axis=0) for key, arrays in parts.items()}}
