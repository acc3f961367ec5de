"""harness.config: edgebench.toml loading, defaults, validation messages and overrides."""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.config import load_config, resolve_store_path
from harness.errors import ConfigError
from variants.errors import RecipeError


def write(tmp_path, text: str, name: str = "edgebench.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.preset == "base"
    assert cfg.variants == ("original", "optimized", "pruned", "quantized", "pruned+quantized")
    assert cfg.devices == ("local",)
    assert cfg.budgets is None and cfg.store is None
    assert cfg.protocol.processes == 3


def test_full_file_and_relative_paths(tmp_path):
    path = write(tmp_path, """
version = 1
preset = "tiny"
variants = ["original", "small"]
devices = ["local", "tag:pi4"]
inventory = "devices.toml"
budgets = "conf/budgets.toml"
store = "state/results.sqlite"
out_dir = "out"
seed = 3
run_timeout_s = 600
[protocol]
processes = 2
min_seconds = 1.5
sentences = ["short"]
threads = 2
[recipes.small]
steps = [{step = "prune", heads = 0.5}, {step = "quantize"}]
""")
    cfg = load_config(path)
    assert cfg.preset == "tiny" and cfg.variants == ("original", "small")
    assert cfg.devices == ("local", "tag:pi4")
    assert cfg.budgets == tmp_path / "conf" / "budgets.toml"
    assert cfg.store == tmp_path / "state" / "results.sqlite"
    assert cfg.out_dir == tmp_path / "out"
    assert cfg.seed == 3 and cfg.run_timeout_s == 600.0
    assert cfg.protocol.processes == 2 and cfg.protocol.sentences == ("short",) and cfg.protocol.threads == 2
    assert cfg.recipes["small"].name == "small" and len(cfg.recipes["small"].steps) == 2
    assert cfg.recipe_tables["small"]["steps"][0]["step"] == "prune"


def test_to_dict_round_trip(tmp_path):
    path = write(tmp_path, 'preset = "tiny"\nvariants = ["original", "mine"]\n'
                           '[recipes.mine]\nsteps = [{step = "quantize"}]\n[protocol]\nprocesses = 1\n')
    cfg = load_config(path)
    again = load_config(None, data=cfg.to_dict(), source="run X")
    assert again == cfg
    assert again.source == "run X"


def test_overrides_are_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, 'preset = "tiny"\n'))
    over = cfg.with_overrides(variants=["original"], budgets="b.toml",
                              protocol=replace(cfg.protocol, processes=1))
    assert over.variants == ("original",) and over.budgets == tmp_path / "b.toml"
    assert over.protocol.processes == 1 and over.preset == "tiny"
    with pytest.raises(ConfigError, match="variants"):
        cfg.with_overrides(variants=["nonexistent"])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("presett = 'tiny'\n", "presett"),
        ("preset = 'huge'\n", "preset"),
        ("preset = 3\n", "preset"),
        ("model = 'not a factory'\n", "model"),
        ("variants = ['original', 'nope']\n", "variants[1]"),
        ("variants = []\n", "variants"),
        ("variants = ['original', 'original']\n", "variants"),
        ("devices = 'local'\n", "devices"),
        ("seed = -1\n", "seed"),
        ("run_timeout_s = 0\n", "run_timeout_s"),
        ("budgets = 3\n", "budgets"),
        ("version = 2\n", "version"),
        ("[protocol]\nprocesses = 0\n", "protocol.processes"),
        ("[protocol]\nrepeats = 2\n", "protocol.repeats"),
        ("[protocol]\nsentences = ['tiny']\n", "protocol.sentences"),
        ("protocol = 3\n", "protocol"),
        ("recipes = 3\n", "recipes"),
    ],
)
def test_invalid_values_name_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key
    assert str(err.value).startswith(f"{path}: {key}: ")


def test_bad_recipe_names_file_and_recipe(tmp_path):
    path = write(tmp_path, "variants = ['x']\n[recipes.x]\nsteps = [{step = 'explode'}]\n")
    with pytest.raises(RecipeError, match=r"recipes\.x"):
        load_config(path)


def test_user_model_factory(tmp_path):
    cfg = load_config(write(tmp_path, 'model = "mypkg.tts:build"\n[model_config]\nwidth = 3\n'))
    assert cfg.model == "mypkg.tts:build" and cfg.model_config == {"width": 3}


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "preset = = 1\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_store_path_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEBENCH_HOME", str(tmp_path / "home"))
    assert resolve_store_path() == tmp_path / "home" / "results.sqlite"
    assert resolve_store_path(store="x.sqlite").name == "x.sqlite"
    write(tmp_path, 'store = "mine.sqlite"\n')
    assert resolve_store_path() == tmp_path / "mine.sqlite"


def test_a_store_url_with_a_password_is_refused(tmp_path, monkeypatch):
    from harness.config import open_store
    from harness.errors import UserError

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, 'store = "postgresql://bench:s3cret@db.example/edgebench"\n')
    with pytest.raises(ConfigError, match="store: a password in the store URL; put it in ~/.pgpass"):
        load_config(path)
    with pytest.raises(UserError, match="--store: a password in the store URL") as err:
        open_store("postgresql://bench:s3cret@db.example/edgebench", create=False)
    assert "s3cret" not in str(err.value)
    write(tmp_path, 'store = "postgresql://bench@db.example/edgebench"\n')   # no password: fine
    assert load_config(tmp_path / "edgebench.toml").store == "postgresql://bench@db.example/edgebench"
