"""Fixed-size point sets in (B, N, 3) batches, for the point-patch Transformer stages
(`pptkit pretrain`, `pptkit finetune`).

A `PointSource` pools the objects of one or more object stores and, with a crop size, random
crops of scene stores (the `crop` points nearest a random point of the scene), so scene
collections pretrain too. Each sample becomes `num_points` points by farthest point sampling
("fps", deterministic) or a uniformly random subset ("random"), is normalised into the unit
sphere, then augmented. All of a sample's randomness comes from
`np.random.default_rng([seed, epoch, index])`: what a step sees depends neither on the number
of loader workers nor on where a run resumed.

The epoch order is a permutation drawn from (seed, epoch), cut into global batches (batch size x
processes) with the last partial batch dropped; under torchrun every rank takes its share
(`rank::world_size`) of each global batch.

Reference settings (Point-MAE / ACT): pretraining on ShapeNet takes a random 1,024-point
subset of each object's points and normalises it; ModelNet40 runs take 1,024 farthest points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pptkit.data.dataset import ObjectDataset, SceneDataset
from pptkit.data.store import open_store
from pptkit.data.transforms import NormalizeCoord
from pptkit.errors import InputError
from pptkit.models.point_ops import farthest_point_sample

Sampling = Literal["fps", "random"]
PointTransform = Callable[[dict, np.random.Generator], dict]
NO_LABEL = -1  # label of scene crops


@dataclass(frozen=True)
class _Item:
    store: int  # which store
    index: int  # item in that store


class PointSource:
    """Objects of object stores and random crops of scene stores, indexed as one pool.

    Every store is checked when the source is built (InputError naming the file): a scene store
    needs `crop` (and every scene at least `crop` points), an object store at least `num_points`
    points per object, and `crop` at least `num_points`.
    """

    def __init__(self, paths: Sequence[str | Path], num_points: int, sampling: Sampling = "fps",
                 crop: int | None = None, option: str = "--data"):
        if sampling not in ("fps", "random"):
            raise ValueError(f"sampling must be 'fps' or 'random', got {sampling!r}")
        if not paths:
            raise InputError("give at least one store (PATH.h5)", option)
        if crop is not None and crop < num_points:
            raise InputError(f"crop of {crop} points is smaller than the {num_points} points per sample",
                             "--crop")
        self.num_points, self.sampling, self.crop = num_points, sampling, crop
        self.stores: list[ObjectDataset | SceneDataset] = []
        items: list[_Item] = []
        labels: list[int] = []
        for number, path in enumerate(paths):
            store, store_labels = self._open(Path(path))
            self.stores.append(store)
            items += [_Item(number, i) for i in range(len(store))]
            labels += store_labels
        self.items = items
        self.labels = np.array(labels, dtype=np.int64)
        self._normalise = NormalizeCoord()
        self._farthest: dict[int, np.ndarray] = {}  # index -> its farthest points (cache_farthest_points)

    def _open(self, path: Path) -> tuple[ObjectDataset | SceneDataset, list[int]]:
        """The store at `path`, checked, and its items' labels (read from the group attributes,
        without loading any points)."""
        f, meta = open_store(path)
        with f:
            if meta.kind == "scene":
                if self.crop is None:
                    raise InputError("holds scenes; pretraining on scenes needs --crop N (points per crop)",
                                     path)
                store = SceneDataset(path)
                for group in store.groups:
                    size = int(f[group].attrs.get("num_voxels", len(f[group]["coord"])))
                    if size < self.crop:
                        raise InputError(f"scene has {size} points, fewer than --crop {self.crop}", path,
                                         where=group)
                labels = [NO_LABEL] * len(store)
            elif meta.kind == "object":
                store = ObjectDataset(path)
                if meta.num_points < self.num_points:
                    raise InputError(f"objects hold {meta.num_points} points, fewer than the "
                                     f"{self.num_points} points per sample (data.num_points)", path)
                labels = [int(f[group].attrs["label"]) for group in store.groups]
            else:
                raise InputError(f"holds {meta.kind}s; expected objects or scenes", path)
        if len(store) == 0:
            raise InputError("holds no complete items", path)
        return store, labels

    def __len__(self) -> int:
        return len(self.items)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The class names shared by every store, or None (scene crops, or stores that differ)."""
        names = {tuple(store.class_names) for store in self.stores}
        if len(names) != 1 or any(isinstance(store, SceneDataset) for store in self.stores):
            return None
        return names.pop()

    def sample(self, index: int, rng: np.random.Generator, transform: PointTransform | None = None
               ) -> tuple[np.ndarray, int]:
        """Item `index` as (points (num_points, 3) float32 in the unit sphere, label)."""
        coord = self._farthest.get(index)
        if coord is None:
            item = self.items[index]
            store = self.stores[item.store]
            coord = np.asarray(store[item.index]["coord"], dtype=np.float32)
            if isinstance(store, SceneDataset):
                coord = random_crop(coord, self.crop, rng)
            coord = coord[self._pick(coord, rng)]
        data = self._normalise({"coord": coord}, rng)
        if transform is not None:
            data = transform(data, rng)
        return np.ascontiguousarray(data["coord"], dtype=np.float32), int(self.labels[index])

    def cache_farthest_points(self, batch_size: int = 64) -> None:
        """Compute every object's farthest points once, `batch_size` objects per batched FPS call,
        and keep them, so that samples skip the FPS from then on (it is deterministic, so samples
        are unchanged). Only for "fps" sampling of object stores; a no-op otherwise. Loader
        workers started afterwards inherit the cache; memory: num_points x 12 bytes per object."""
        if self.sampling != "fps" or any(isinstance(store, SceneDataset) for store in self.stores):
            return
        for number, store in enumerate(self.stores):
            todo = [i for i, item in enumerate(self.items) if item.store == number and i not in self._farthest]
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                coord = np.stack([np.asarray(store[self.items[i].index]["coord"], dtype=np.float32) for i in chunk])
                with torch.no_grad():
                    picked = farthest_point_sample(torch.from_numpy(coord), self.num_points).numpy()
                for row, i in enumerate(chunk):
                    self._farthest[i] = coord[row][picked[row]]

    def _pick(self, coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.sampling == "random":
            return np.sort(rng.choice(len(coord), self.num_points, replace=False))
        with torch.no_grad():
            return farthest_point_sample(torch.from_numpy(coord).unsqueeze(0), self.num_points)[0].numpy()


def random_crop(coord: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The `size` points nearest a uniformly random point of the cloud, in their original order."""
    if len(coord) <= size:
        return coord
    offset = coord - coord[rng.integers(len(coord))]
    nearest = np.argpartition(np.einsum("ij,ij->i", offset, offset), size - 1)[:size]
    return coord[np.sort(nearest)]


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> list[np.ndarray]:
    """This rank's batches of `epoch`: a (seed, epoch) permutation in global batches of
    batch_size x world_size (the last partial one dropped), each rank taking rank::world_size."""
    global_batch = batch_size * world_size
    if num_items < global_batch:
        raise ValueError(f"{num_items} items are fewer than one global batch ({global_batch})")
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    usable = num_items // global_batch * global_batch
    return [order[start:start + global_batch][rank::world_size] for start in range(0, usable, global_batch)]


def ordered_batches(num_items: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """Every item once, in order (for validation and feature extraction): global batches of
    batch_size x world_size, the last one partial, each rank taking its share (empty shares
    are left out)."""
    global_batch = batch_size * world_size
    batches = [np.arange(start, min(start + global_batch, num_items))[rank::world_size]
               for start in range(0, num_items, global_batch)]
    return [batch for batch in batches if len(batch)]


@dataclass
class PointBatch:
    """One step's input: points (B, N, 3) float32, labels (B,) int64 (-1 for scene crops), and
    the pool index of every sample."""

    points: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device) -> PointBatch:
        return PointBatch(self.points.to(device), self.labels.to(device), self.index.to(device))


class PointBatches(torch.utils.data.Dataset):
    """An epoch's batches as a map-style dataset (one item = one whole batch), so loader workers
    build them; sample i of epoch e draws from default_rng([seed, e, i])."""

    def __init__(self, source: PointSource, batches: list[np.ndarray], transform: PointTransform | None,
                 seed: int, epoch: int):
        self.source, self.batches, self.transform = source, batches, transform
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices = self.batches[step]
        samples = [self.source.sample(int(i), np.random.default_rng([self.seed, self.epoch, int(i)]),
                                      self.transform) for i in indices]
        points = np.stack([points for points, _ in samples])
        labels = np.array([label for _, label in samples], dtype=np.int64)
        return points, labels, np.asarray(indices, dtype=np.int64)


def collate_points(item: tuple[np.ndarray, np.ndarray, np.ndarray]) -> PointBatch:
    """DataLoader collate for the batches PointBatches assembled (module level, so spawned
    workers can unpickle it)."""
    points, labels, index = item
    return PointBatch(torch.from_numpy(points), torch.from_numpy(labels), torch.from_numpy(index))


def point_loader(batches: PointBatches, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over one epoch's batches, in order; works under fork and spawn."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=num_workers,
                                       collate_fn=collate_points)
