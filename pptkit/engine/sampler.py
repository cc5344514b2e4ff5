"""Multi-dataset batch schedule for joint training.

Every batch comes from one dataset. Datasets interleave by integer ratios (4:2:1 means four
batches of the first, two of the second, one of the third, repeated). An epoch is one pass over
the main dataset (`main`, the recipe's `data.epoch_by`): it ends when the main dataset runs out
of full batches, while the others start a new reshuffled pass whenever they run out, as in the
reference's multi-dataset loader. The schedule depends only on (seed, epoch), so all ranks of a
distributed run agree on which dataset each step uses, and a resumed run sees the same
batches; each rank then takes its own share of that step's global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScheduledBatch:
    """One step: the dataset it draws from and the sample indices for this rank."""

    dataset: int
    indices: tuple[int, ...]
    pass_index: int = 0  # which pass over its dataset this epoch (datasets other than the main one cycle)


def interleave_pattern(ratios: list[int]) -> list[int]:
    """Dataset order inside one cycle, spreading each dataset evenly (4:2:1 -> 0,1,0,2,0,1,0)."""
    if not ratios or any(r < 1 for r in ratios):
        raise ValueError(f"ratios must be positive integers, got {ratios}")
    slots = []
    for d, r in enumerate(ratios):
        slots += [((k + 0.5) / r, d) for k in range(r)]
    return [d for _, d in sorted(slots)]


def epoch_schedule(dataset_sizes: list[int], ratios: list[int], batch_size: int, seed: int,
                   epoch: int, rank: int = 0, world_size: int = 1, main: int = 0,
                   keys: list[int] | None = None) -> list[ScheduledBatch]:
    """The batches of one epoch for `rank`, identical in dataset order across ranks.

    `keys` (one integer per dataset, default its index) seed each dataset's shuffles, so a
    dataset keyed by its name is shuffled the same whether it is trained alone or jointly.
    """
    keys = list(range(len(dataset_sizes))) if keys is None else list(keys)
    global_batch = batch_size * world_size
    small = [d for d, size in enumerate(dataset_sizes) if size < global_batch]
    if small:
        raise ValueError(f"dataset(s) {small} have fewer samples than one global batch ({global_batch})")
    if not 0 <= main < len(dataset_sizes):
        raise ValueError(f"main dataset index {main} is not one of the {len(dataset_sizes)} datasets")

    def one_pass(d: int, k: int) -> list[np.ndarray]:
        """Pass k of dataset d over its scenes: a permutation cut into full global batches."""
        order = np.random.default_rng([seed, epoch, keys[d], k]).permutation(dataset_sizes[d])
        usable = (dataset_sizes[d] // global_batch) * global_batch
        return [order[i:i + global_batch] for i in range(0, usable, global_batch)]

    queues = [one_pass(d, 0) for d in range(len(dataset_sizes))]
    passes = [0] * len(queues)
    cursor = [0] * len(queues)
    schedule: list[ScheduledBatch] = []
    pattern = interleave_pattern(ratios)
    while True:
        for d in pattern:
            if cursor[d] == len(queues[d]):
                if d == main:
                    return schedule
                passes[d] += 1
                queues[d], cursor[d] = one_pass(d, passes[d]), 0
            chunk = queues[d][cursor[d]]
            cursor[d] += 1
            schedule.append(ScheduledBatch(d, tuple(int(i) for i in chunk[rank::world_size]), passes[d]))
