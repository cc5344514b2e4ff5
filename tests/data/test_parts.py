"""The crash-safe partial state of a store: shards, resume, merge."""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest

from pptkit.data.parts import META_FILE, PartialStore, parts_folder, shard_name
from pptkit.data.store import group_name, open_store, voxelize_scene
from pptkit.errors import InputError
from tests.data.test_store import make_scene, scene_meta


def records(count: int) -> dict[str, object]:
    return {f"Area_1/room_{i}": voxelize_scene(make_scene(f"room_{i}", 200 + 50 * i, i), 0.1)
            for i in range(count)}


def test_shards_resume_and_merge(tmp_path):
    output = tmp_path / "sub" / "store.h5"
    folder = parts_folder(output)
    assert folder.name == "store.h5.parts"
    items = records(3)
    parts = PartialStore.open(folder, scene_meta(), resume=False)
    assert not folder.exists() and not output.parent.exists()  # nothing written before an add
    names = list(items)
    parts.add(names[0], items[names[0]])
    parts.add(names[1], items[names[1]])
    shard = folder / shard_name(group_name(names[1]))
    assert shard.is_file() and (folder / META_FILE).is_file()

    # Leftovers of a kill: a shard being written, and a shard that cannot be read.
    (folder / "0123.h5.tmp").write_bytes(b"half")
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(InputError, match="different settings.*grid_size") as err:
        PartialStore.open(folder, replace(scene_meta(), grid_size=0.2), resume=True)
    assert str(folder) in str(err.value)
    resumed = PartialStore.open(folder, scene_meta(), resume=True)
    assert set(resumed.done) == {group_name(names[0])}
    assert not list(folder.glob("*.tmp"))
    assert resumed.meta.created == parts.meta.created != ""
    for name in names[1:]:
        resumed.add(name, items[name])
    resumed.merge(names, output)
    assert not folder.exists()

    f, meta = open_store(output)
    with f:
        assert meta.created == parts.meta.created and meta.class_names == ("a", "b", "c")
        assert sorted(f) == sorted(group_name(n) for n in names)
        for name, record in items.items():
            group = f[group_name(name)]
            assert group.attrs["complete"] and group.attrs["name"] == name
            assert np.array_equal(group["coord"][()], record.coord)
            assert np.array_equal(group["points/inverse"][()], record.inverse)
            assert group["coord"].compression == "gzip"


def test_stale_folder_is_replaced_only_on_the_first_add(tmp_path):
    folder = parts_folder(tmp_path / "store.h5")
    items = records(2)
    first = PartialStore.open(folder, scene_meta(), resume=False)
    name = next(iter(items))
    first.add(name, items[name])
    before = sorted(p.name for p in folder.iterdir())

    fresh = PartialStore.open(folder, scene_meta(), resume=False)
    assert fresh.done == {}
    fresh.remove()  # a run that failed before its first item leaves the old state alone
    assert sorted(p.name for p in folder.iterdir()) == before
    other = list(items)[1]
    fresh.add(other, items[other])
    with h5py.File(folder / shard_name(group_name(other)), "r") as f:
        assert list(f) == [group_name(other)]
    assert not (folder / shard_name(group_name(name))).exists()
    fresh.remove()
    assert not folder.exists()


def test_a_file_in_the_way_is_an_input_error(tmp_path):
    folder = parts_folder(tmp_path / "store.h5")
    folder.write_text("not mine")
    with pytest.raises(InputError, match="in the way"):
        PartialStore.open(folder, scene_meta(), resume=True)
