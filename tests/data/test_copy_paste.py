"""Memory-based copy-paste: the memory of instances and their placement in new scenes."""

from __future__ import annotations

import numpy as np

from pptkit.data.copy_paste import CopyPaste, MemoryBank, build_memory, empty_memory
from pptkit.data.transforms import GridSample

GRID = 0.05


def room(seed: int = 0) -> dict:
    """A 4 x 4 m floor at z = 0 (normals up) with a 1 m cube standing in the middle, no labels."""
    xs = np.arange(-2, 2, GRID / 2, dtype=np.float32)
    floor = np.stack(np.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    floor = np.concatenate([floor, np.zeros((len(floor), 1), np.float32)], 1)
    rng = np.random.default_rng(seed)
    cube = rng.uniform([-0.5, -0.5, 0.0], [0.5, 0.5, 1.0], (4000, 3)).astype(np.float32)
    coord = np.concatenate([floor, cube])
    normal = np.zeros_like(coord)
    normal[: len(floor), 2] = 1.0
    n = len(coord)
    return {"name": "room", "coord": coord, "normal": normal, "color": np.full((n, 3), 100, np.uint8),
            "segment": np.full(n, -1, np.int16), "instance": np.full(n, -1, np.int32),
            "superpoint": np.zeros(n, np.int32), "grid_coord": np.floor(coord / GRID).astype(np.int32)}


def box_instance(size: float, label: int, n: int = 300, seed: int = 1) -> tuple:
    pts = np.random.default_rng(seed).uniform([0, 0, 0], [size, size, size], (n, 3)).astype(np.float32)
    return pts + np.float32(5.0), np.full((n, 3), 30, np.uint8), np.tile(np.float32([0, 0, 1]), (n, 1)), label


def labelled_scene(instances: list[tuple], name: str = "s") -> dict:
    """A scene made of instances (coord, color, normal, label), instance ids 0, 1, ..."""
    coord = np.concatenate([i[0] for i in instances])
    return {"name": name, "coord": coord, "color": np.concatenate([i[1] for i in instances]),
            "normal": np.concatenate([i[2] for i in instances]),
            "segment": np.concatenate([np.full(len(i[0]), i[3], np.int16) for i in instances]),
            "instance": np.concatenate([np.full(len(i[0]), k, np.int32) for k, i in enumerate(instances)])}


def keys(coord: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.floor(coord / GRID).astype(np.int64).tolist()))


def test_memory_keeps_b_instances_per_class_relative_to_their_footprint():
    scene = labelled_scene([box_instance(0.4, 3, seed=1), box_instance(0.3, 3, seed=2), box_instance(0.5, 3, seed=3),
                            box_instance(0.4, 5, seed=4), box_instance(4.0, 0, seed=5), box_instance(0.4, 7, seed=6)])
    memory = build_memory([scene], {3: 0, 5: 1, 0: 2}, per_class=2, seed=0, min_rows=20, max_extent=2.5)
    assert sorted(memory.labels.tolist()) == [0, 0, 1]  # two of class 3, one of 5; the 4 m "wall" is too big
    for i in range(len(memory)):
        coord, color, normal = memory.instance(i)
        assert len(coord) == 300 and (color == 30).all()
        low, high = coord.min(0), coord.max(0)
        assert abs(low[2]) < 1e-6 and np.allclose((low[:2] + high[:2]) / 2, 0, atol=1e-5)
    again = build_memory([scene], {3: 0, 5: 1, 0: 2}, per_class=2, seed=0)
    assert again.sources == memory.sources
    round_trip = MemoryBank.from_arrays(memory.to_arrays())
    assert round_trip.sources == memory.sources and np.array_equal(round_trip.coord, memory.coord)
    assert memory.per_class(1).labels.tolist() == [0, 1]
    assert len(MemoryBank.concatenate([memory, empty_memory(), memory])) == 2 * len(memory)


def test_pasted_instances_stand_on_the_floor_without_overlap_and_carry_their_labels():
    memory = build_memory([labelled_scene([box_instance(0.4, 3, seed=1), box_instance(0.3, 4, seed=2)])],
                          {3: 2, 4: 6}, per_class=1, seed=0)
    scene = room()
    paste = CopyPaste(memory, GRID, max_instances=3, p=1.0, tries=50)
    for seed in range(5):
        out = paste(scene, np.random.default_rng(seed))
        n = len(scene["coord"])
        assert "grid_coord" not in out or len(out["grid_coord"]) == len(out["coord"])
        assert np.array_equal(out["coord"][:n], scene["coord"]) and (out["segment"][:n] == -1).all()
        new = out["coord"][n:]
        assert len(new) > 0
        labels = out["segment"][n:]
        assert set(labels.tolist()) <= {2, 6}
        for inst in np.unique(out["instance"][n:]):
            rows = out["instance"][n:] == inst
            assert len(set(labels[rows].tolist())) == 1 and rows.sum() == 300  # a whole instance, one label
            assert len(np.unique(out["superpoint"][n:][rows])) == 1
            assert out["superpoint"][n:][rows][0] > 0  # a fresh superpoint id
            assert abs(new[rows][:, 2].min() - GRID) < 1e-5  # one voxel above the floor
        assert not keys(new) & keys(scene["coord"])  # nothing pasted into an occupied voxel
        pasted_keys = [keys(new[out["instance"][n:] == i]) for i in np.unique(out["instance"][n:])]
        for a in range(len(pasted_keys)):
            for b in range(a):
                assert not pasted_keys[a] & pasted_keys[b]  # nor into another paste
        assert np.abs(new[:, :2]).max() <= 2.0 + 0.5  # over the floor
    assert all(np.array_equal(paste(scene, np.random.default_rng(7))[k], paste(scene, np.random.default_rng(7))[k])
               for k in ("coord", "segment"))


def test_a_full_scene_gets_no_paste_and_the_chain_regrids_pasted_rows():
    memory = build_memory([labelled_scene([box_instance(0.4, 3)])], {3: 0}, per_class=1, seed=0)
    scene = room()
    # Fill every voxel of the first metre above the floor: no place to stand.
    centres = (np.arange(-2, 2, GRID) + GRID / 2).astype(np.float32)
    heights = (np.arange(1, 20) * GRID + GRID / 2).astype(np.float32)
    filled = np.stack(np.meshgrid(centres, centres, heights, indexing="ij"), -1).reshape(-1, 3)
    crowded = {k: np.concatenate([v, v[:1].repeat(len(filled), 0)]) if isinstance(v, np.ndarray) else v
               for k, v in scene.items()}
    crowded["coord"] = np.concatenate([scene["coord"], filled])
    out = CopyPaste(memory, GRID, tries=10)(crowded, np.random.default_rng(0))
    assert len(out["coord"]) == len(crowded["coord"])
    pasted = CopyPaste(memory, GRID)(scene, np.random.default_rng(0))
    gridded = GridSample(GRID)(pasted, np.random.default_rng(0))
    assert len(gridded["grid_coord"]) == len(gridded["coord"]) and (gridded["segment"] == 0).any()
