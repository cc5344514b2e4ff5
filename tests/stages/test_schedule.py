"""The optimiser and one-cycle schedule of joint-train, down to very short runs."""

import pytest
import torch

from pptkit.config import load_recipe
from pptkit.stages.joint_train import _optimizer
from pptkit.stages.ppt_recipe import PPTRecipe


@pytest.mark.parametrize("total", [1, 2, 3, 20, 21, 400])
def test_one_cycle_steps_through_any_run_length(total):
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = _optimizer(model, load_recipe(None, PPTRecipe), total)
    lrs = []
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(0 < lr <= 0.05 + 1e-12 for lr in lrs)
    if total >= 20:
        assert max(lrs) == pytest.approx(0.05, rel=0.05) and lrs[-1] < 1e-3
