"""Recipes: defaults, overrides typed by field, unknown keys and bad values are clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from pptkit.config import tomllib

from pptkit.config import load_recipe, to_toml
from pptkit.errors import InputError
from pptkit.stages.ppt_recipe import PPTRecipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("ppt-*.toml")))
def test_shipped_recipes_load(name):
    recipe = load_recipe(RECIPES / name, PPTRecipe)
    assert recipe.optim.lr > 0 and recipe.train.epochs > 0
    assert set(recipe.data.ratios) >= {"structured3d", "scannet", "s3dis"}


def test_paper_recipe_matches_the_method_defaults():
    recipe = load_recipe(RECIPES / "ppt-scannet-s3dis-s3d.toml", PPTRecipe)
    assert recipe.model.adapter == "pdnorm" and recipe.model.head == "language"
    assert recipe.model.context_channels == 256 and recipe.model.logit_scale == 100.0
    assert recipe.model.prompt_template == "{}" and not recipe.model.learnable_logit_scale
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


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "'data.batch_size' must be >= 1, got 0"),
    ("train.log_every=0", "'train.log_every' must be >= 1, got 0"),
    ("data.grid_size=0", "'data.grid_size' must be > 0, got 0.0"),
    ("optim.lr=-1", "'optim.lr' must be > 0, got -1.0"),
    ("train.epochs=0", "'train.epochs' must be >= 1, got 0"),
    ("data.ratios.scannet=0", "'data.ratios.scannet' must be >= 1, got 0"),
    ("model.channels=[8,8,0,8,8,8,8,8]", "'model.channels[2]' must be >= 1, got 0"),
])
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(InputError) as caught:
        load_recipe(RECIPES / "ppt-tiny.toml", PPTRecipe, [override])
    assert str(caught.value) == f"{RECIPES / 'ppt-tiny.toml'} with --set overrides: {message}"


def test_out_of_range_value_in_the_file_names_the_file(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text("[optim]\nmomentum = 1.5\n")
    with pytest.raises(InputError, match=r"bad.toml: 'optim.momentum' must be <= 1, got 1.5"):
        load_recipe(recipe, PPTRecipe)


def test_recipes_read_without_tomllib(tmp_path):
    """Python 3.10 has no tomllib: the config module falls back to the tomli package."""
    script = (
        "import sys; sys.modules['tomllib'] = None\n"  # makes `import tomllib` fail as on 3.10
        "from pptkit.config import load_recipe, tomllib\n"
        "from pptkit.stages.ppt_recipe import PPTRecipe\n"
        "assert tomllib.__name__ == 'tomli', tomllib\n"
        f"r = load_recipe({str(RECIPES / 'ppt-tiny.toml')!r}, PPTRecipe, ['optim.lr=0.5'])\n"
        "assert r.optim.lr == 0.5\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_source_runs_on_the_oldest_declared_python():
    """`requires-python` in pyproject.toml must hold: vermin finds the minimum version each file needs."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject["project"]["requires-python"]
    assert declared.startswith(">=")
    oldest = declared[2:].strip()
    vermin = Path(sys.executable).with_name("vermin")  # installed with the dev extras
    result = subprocess.run([str(vermin), "--no-tips", "--violations", "--eval-annotations",
                             f"-t={oldest}-", str(ROOT / "pptkit")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
