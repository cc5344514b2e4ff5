"""The shared learning-rate schedules, down to very short runs."""

import pytest
import torch

from pptkit.engine.schedules import lr_schedule


@pytest.mark.parametrize("total", [1, 2, 3, 20, 400])
def test_one_cycle_peaks_each_group_at_its_own_rate(total):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.01}])
    scheduler = lr_schedule(optimizer, "onecycle", total)
    peaks = [0.0, 0.0]
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        peaks = [max(p, g["lr"]) for p, g in zip(peaks, optimizer.param_groups)]
    assert all(0 < p <= lr + 1e-12 for p, lr in zip(peaks, (0.1, 0.01)))
    if total >= 20:
        assert peaks == pytest.approx([0.1, 0.01], rel=0.05)


def test_cosine_and_constant():
    for kind, last in (("cosine", 0.0), ("constant", 0.1)):
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        scheduler = lr_schedule(optimizer, kind, 10)
        for _ in range(10):
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(last, abs=1e-9)
