"""Multi-dataset batch schedule for joint training.

Every batch comes from one dataset. Datasets interleave by integer ratios (4:2:1 means four
batches of the first, two of the second, one of the third, repeated), and an epoch ends when
the first dataset runs out of full batches. The schedule depends only on (seed, epoch), so all
ranks of a distributed run agree on which dataset each step uses; each rank then takes its own
share of that step's global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScheduledBatch:
    """One step: the dataset it draws from and the sample indices for this rank."""

    dataset: int
    indices: tuple[int, ...]


def interleave_pattern(ratios: list[int]) -> list[int]:
    """Dataset order inside one cycle, spreading each dataset evenly (4:2:1 -> 0,1,0,2,0,1,0)."""
    if not ratios or any(r < 1 for r in ratios):
        raise ValueError(f"ratios must be positive integers, got {ratios}")
    slots = []
    for d, r in enumerate(ratios):
        slots += [((k + 0.5) / r, d) for k in range(r)]
    return [d for _, d in sorted(slots)]


def epoch_schedule(dataset_sizes: list[int], ratios: list[int], batch_size: int, seed: int,
                   epoch: int, rank: int = 0, world_size: int = 1) -> list[ScheduledBatch]:
    """The batches of one epoch for `rank`, identical in dataset order across ranks."""
    global_batch = batch_size * world_size
    queues = []
    for d, size in enumerate(dataset_sizes):
        rng = np.random.default_rng([seed, epoch, d])
        order = rng.permutation(size)
        usable = (size // global_batch) * global_batch
        queues.append([order[i:i + global_batch] for i in range(0, usable, global_batch)])
    if any(len(q) == 0 for q in queues):
        small = [d for d, q in enumerate(queues) if not q]
        raise ValueError(f"dataset(s) {small} have fewer samples than one global batch ({global_batch})")
    schedule: list[ScheduledBatch] = []
    cursor = [0] * len(queues)
    pattern = interleave_pattern(ratios)
    while True:
        for d in pattern:
            if cursor[d] == len(queues[d]):
                return schedule
            chunk = queues[d][cursor[d]]
            cursor[d] += 1
            schedule.append(ScheduledBatch(d, tuple(int(i) for i in chunk[rank::world_size])))
