"""Recipes: defaults, overrides typed by field, unknown keys and bad values are clear errors."""

from pathlib import Path

import pytest

from pptkit.config import load_recipe, to_toml
from pptkit.errors import InputError
from pptkit.stages.ppt_recipe import PPTRecipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("ppt-*.toml")))
def test_shipped_recipes_load(name):
    recipe = load_recipe(RECIPES / name, PPTRecipe)
    assert recipe.optim.lr > 0 and recipe.train.epochs > 0
    assert set(recipe.data.ratios) >= {"structured3d", "scannet", "s3dis"}


def test_paper_recipe_matches_the_method_defaults():
    recipe = load_recipe(RECIPES / "ppt-scannet-s3dis-s3d.toml", PPTRecipe)
    assert recipe.model.adapter == "pdnorm" and recipe.model.head == "language"
    assert recipe.model.context_channels == 256 and recipe.model.temperature == 0.07
    assert recipe.data.ratios == {"structured3d": 4, "scannet": 2, "s3dis": 1}
    assert (recipe.optim.lr, recipe.optim.weight_decay, recipe.optim.nesterov) == (0.05, 1e-4, True)
    assert recipe.optim.prompt_lr_scale == 0.1


def test_overrides_are_typed_by_the_field():
    recipe = load_recipe(RECIPES / "ppt-tiny.toml", PPTRecipe,
                         ["optim.lr=1", "model.channels=[8,8,8,8,8,8,8,8]", "model.head=decoupled",
                          "data.ratios.scannet=3"])
    assert recipe.optim.lr == 1.0 and isinstance(recipe.optim.lr, float)
    assert recipe.model.channels == (8,) * 8
    assert recipe.model.head == "decoupled"
    assert recipe.data.ratios["scannet"] == 3


def test_resolved_config_round_trips(tmp_path):
    recipe = load_recipe(RECIPES / "ppt-tiny.toml", PPTRecipe, ["train.epochs=3"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(recipe))
    assert load_recipe(path, PPTRecipe) == recipe


@pytest.mark.parametrize("override, message", [
    ("model.depth=3", "unknown key 'model.depth'"),
    ("optim.lr='fast'", "'optim.lr' must be float"),
    ("model.head=softmax", "'model.head' must be one of language | decoupled | unionized"),
    ("nonsense", "expects key.path=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(InputError, match=message.replace("|", r"\|").replace("(", r"\(")):
        load_recipe(RECIPES / "ppt-tiny.toml", PPTRecipe, [override])


def test_bad_recipe_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nx=1")
    with pytest.raises(InputError, match=str(bad)):
        load_recipe(bad, PPTRecipe)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[modle]\nx = 1\n")
    with pytest.raises(InputError, match="unknown key 'modle'"):
        load_recipe(unknown, PPTRecipe)
