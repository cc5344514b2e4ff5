"""The multi-dataset schedule: one dataset per batch, ratios, epoch end, rank agreement."""

from collections import Counter

import pytest

from pptkit.engine.sampler import epoch_schedule, interleave_pattern


def test_pattern_spreads_datasets_by_ratio():
    pattern = interleave_pattern([4, 2, 1])
    assert Counter(pattern) == {0: 4, 1: 2, 2: 1}
    assert pattern == [0, 1, 0, 2, 0, 1, 0]


def test_batches_follow_the_ratios_and_stop_when_the_main_dataset_runs_out():
    # 4:2:1 with plenty of data for datasets 1 and 2: dataset 0 (40 scenes, 10 batches) is the main one.
    schedule = epoch_schedule([40, 100, 100], [4, 2, 1], batch_size=4, seed=0, epoch=0)
    counts = Counter(b.dataset for b in schedule)
    assert counts[0] == 10
    # pattern 0,1,0,2,0,1,0: two full cycles, then 0,1,0,2,0,1,0 finds dataset 0 exhausted at its next turn
    assert counts[1] == 5 and counts[2] == 3
    for batch in schedule:
        assert len(batch.indices) == 4
        assert all(0 <= i < [40, 100, 100][batch.dataset] for i in batch.indices)
    # no scene repeats within an epoch while a dataset is on its first pass
    for d in range(3):
        seen = [i for b in schedule if b.dataset == d for i in b.indices]
        assert len(seen) == len(set(seen))


def test_the_main_dataset_is_exhausted_exactly_once_and_the_others_cycle():
    # The second dataset has 2 batches a pass but is asked for 10: it restarts, reshuffled.
    schedule = epoch_schedule([100, 4, 100], [1, 1, 1], batch_size=2, seed=0, epoch=0)
    counts = Counter(b.dataset for b in schedule)
    assert counts == {0: 50, 1: 50, 2: 50}
    main = [i for b in schedule if b.dataset == 0 for i in b.indices]
    assert sorted(main) == list(range(100))  # one full pass, every scene once
    small = [b.indices for b in schedule if b.dataset == 1]
    passes = [sorted(small[k] + small[k + 1]) for k in range(0, 50, 2)]
    assert all(p == [0, 1, 2, 3] for p in passes)  # each pass covers the dataset once ...
    assert len({small[k] for k in range(0, 50, 2)}) > 1  # ... in a new order
    assert schedule[-1].dataset == 2


def test_another_main_dataset_sets_the_epoch_length():
    schedule = epoch_schedule([40, 8, 100], [4, 2, 1], batch_size=4, seed=0, epoch=0, main=1)
    counts = Counter(b.dataset for b in schedule)
    assert counts[1] == 2 and counts[0] == 5  # one cycle 0,1,0,2,0,1,0, then 0 before 1 is found empty
    assert sorted(i for b in schedule if b.dataset == 1 for i in b.indices) == list(range(8))


def test_schedule_depends_on_seed_and_epoch_only():
    a = epoch_schedule([20, 10], [2, 1], 2, seed=3, epoch=1)
    assert a == epoch_schedule([20, 10], [2, 1], 2, seed=3, epoch=1)
    assert a != epoch_schedule([20, 10], [2, 1], 2, seed=3, epoch=2)
    assert a != epoch_schedule([20, 10], [2, 1], 2, seed=4, epoch=1)


@pytest.mark.parametrize("main", [0, 1])
def test_ranks_see_the_same_dataset_each_step_and_split_its_global_batch(main):
    ranks = [epoch_schedule([24, 12], [2, 1], 2, seed=0, epoch=0, rank=r, world_size=2, main=main)
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    for b0, b1 in zip(*ranks):
        assert b0.dataset == b1.dataset
        assert len(b0.indices) == len(b1.indices) == 2
        assert not set(b0.indices) & set(b1.indices)


def test_too_small_dataset_is_an_error():
    with pytest.raises(ValueError, match="fewer samples than one global batch"):
        epoch_schedule([10, 1], [1, 1], batch_size=2, seed=0, epoch=0)


def test_a_dataset_keyed_by_name_is_shuffled_the_same_alone_or_jointly():
    alone = epoch_schedule([12], [1], 2, seed=0, epoch=3, keys=[777])
    joint = epoch_schedule([8, 12], [1, 1], 2, seed=0, epoch=3, main=1, keys=[555, 777])
    assert [b.indices for b in alone] == [b.indices for b in joint if b.dataset == 1]
    assert all(b.pass_index == 0 for b in alone)
    assert {b.pass_index for b in joint if b.dataset == 0} == {0, 1}  # 4 batches a pass, 6 asked for
