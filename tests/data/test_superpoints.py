"""Superpoints: neighbour edges, graph merging, and the over-segmentation of simple geometry."""

from __future__ import annotations

import numpy as np

from pptkit.data.class_split import split_steps
from pptkit.data.superpoints import felzenszwalb, superpoints, voxel_edges


def test_voxel_edges_join_the_26_neighbours_once():
    grid = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 1], [3, 0, 0]])
    i, j = voxel_edges(grid)
    pairs = {tuple(sorted(p)) for p in zip(i.tolist(), j.tolist())}
    assert len(pairs) == len(i)  # each edge once
    assert pairs == {(0, 1), (0, 2), (1, 2)}  # voxel 3 is two cells away from everything


def test_felzenszwalb_merges_light_edges_and_keeps_heavy_ones():
    # Two chains of four nodes joined by one heavy edge.
    i = np.array([0, 1, 2, 4, 5, 6, 3])
    j = np.array([1, 2, 3, 5, 6, 7, 4])
    w = np.array([0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 1.0])
    assert felzenszwalb(8, i, j, w, k=0.1, min_size=1).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert felzenszwalb(8, i, j, w, k=10.0, min_size=1).tolist() == [0] * 8  # a large k merges it all
    assert felzenszwalb(8, i, j, w, k=0.1, min_size=5).tolist() == [0] * 8  # small parts join a neighbour


def plane(axis_a: int, axis_b: int, normal_axis: int, offset: float, color, size: float = 1.0, step: float = 0.02):
    u = np.arange(0, size, step, dtype=np.float32)
    a, b = np.meshgrid(u, u, indexing="ij")
    coord = np.zeros((a.size, 3), np.float32)
    coord[:, axis_a], coord[:, axis_b] = a.ravel(), b.ravel()
    coord[:, normal_axis] = offset
    normal = np.zeros_like(coord)
    normal[:, normal_axis] = 1.0
    return coord, normal, np.tile(np.array(color, np.uint8), (len(coord), 1))


def test_a_floor_and_a_wall_are_two_superpoints_and_a_colour_edge_splits_a_plane():
    floor = plane(0, 1, 2, 0.0, (120, 90, 60))
    wall = plane(0, 2, 1, 0.0, (120, 90, 60))
    coord, normal, color = (np.concatenate([f, w]) for f, w in zip(floor, wall))
    labels = superpoints(coord, normal, color, grid_size=0.1)
    n = len(floor[0])
    # Away from the voxels that hold both (where the mean normal is diagonal):
    floor_labels = set(labels[:n][floor[0][:, 1] >= 0.1].tolist())
    wall_labels = set(labels[n:][wall[0][:, 2] >= 0.1].tolist())
    assert len(floor_labels) == 1 and len(wall_labels) == 1 and floor_labels != wall_labels
    again = superpoints(coord, normal, color, grid_size=0.1)
    assert np.array_equal(labels, again)

    coord, normal, color = floor
    color = color.copy()
    color[coord[:, 0] >= 0.5] = (10, 200, 240)
    split = superpoints(coord, normal, color, grid_size=0.1, colour_weight=5.0)
    assert split[coord[:, 0] < 0.4].max() != split[coord[:, 0] > 0.6].min()
    assert len(set(superpoints(coord, normal, color, grid_size=0.1, colour_weight=0.0).tolist())) == 1


def test_split_steps_in_label_order():
    names = [f"c{i}" for i in range(20)]
    assert split_steps(names, "15-5") == [names[:15], names[15:]]
    assert split_steps(names, "15-3-2") == [names[:15], names[15:18], names[18:]]
    for bad in ("15-4", "20", "a-b", "15-0-5"):
        try:
            split_steps(names, bad)
        except Exception as exc:  # noqa: BLE001 - InputError, checked by message
            assert "split" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
