"""``edgebench.toml``: what to build, where to measure it, how, and where results go.

```toml
version = 1                      # optional; the only version so far
preset = "base"                  # reference model preset: tiny, base, large
# model_dir = "~/.cache/modelscope/hub/damo/speech_sambert-hifigan_tts_zhitian_emo_zh-cn_16k"
#                                # or a ModelScope model directory (its trained weights); preset is ignored
# voice = "zhitian_emo"          # ... which of its voices (default: the first in voices/voices.json)
# model = "mypkg.tts:factory"    # or a user's model factory (see variants.plugin); preset is then ignored
# [model_config]                 # ... with its configuration table
variants = ["original", "pruned", "quantized", "pruned+quantized", "small"]
runtimes = ["torch", "onnxruntime"]   # measure each variant on both (default: ["torch"]; variants.runtimes)
devices = ["local", "tag:pi4"]   # names or tag:T from the inventory
inventory = "devices.toml"       # default: ./devices.toml if present
budgets = "budgets.toml"         # default: the built-in budgets (harness.budgets)
store = ".edgebench/results.sqlite"   # default: the state directory's results.sqlite
out_dir = "edgebench-out"        # reports go to <out_dir>/<run id>/
seed = 0
run_timeout_s = 21600            # the whole run (every device), seconds; at most 604800 (7 days)
microbench_s = 0.5               # seconds per device micro-benchmark (harness.limits); 0: none; at most 60
microbench_max_age_s = 3600      # reuse a device identity's micro-benchmarks this recent; 0: measure each run

[protocol]                       # devices.ondevice.protocol.Protocol fields (each bounded: see its docstring)
processes = 3
warmup = 2
min_iters = 10
min_seconds = 5.0
max_iters = 200
threads = 2
timeout_s = 900
ort_graph_optimization = "all"   # ONNX Runtime session options (onnxruntime variants only)
ort_providers = ["CPUExecutionProvider"]
sentences = ["short", "medium", "long"]

[recipes.small]                  # custom variants: raw tables checked by variants.recipes.parse_recipe
steps = [{step = "prune", heads = 0.5}, {step = "quantize"}]
```

Relative paths are relative to the directory of the file. Unknown keys and bad values raise ConfigError
naming the file and the key; an invalid recipe raises RecipeError naming them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from devices.errors import DevicesError
from devices.ondevice.protocol import Protocol
from harness.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_VERSION = 1
DEFAULT_CONFIG_NAME = "edgebench.toml"
DEFAULT_PRESET = "base"
DEFAULT_DEVICES = ("local",)
DEFAULT_RUNTIMES = ("torch",)
DEFAULT_OUT_DIR = "edgebench-out"
DEFAULT_RUN_TIMEOUT_S = 6 * 3600.0
MAX_RUN_TIMEOUT_S = 7 * 86400.0  # a week: a larger value is a typo, not a run anyone waits for
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_PATH_KEYS = ("inventory", "budgets", "store", "out_dir")
KEYS = ("version", "preset", "model_dir", "voice", "model", "model_config", "variants", "runtimes", "recipes",
        "devices",
        *_PATH_KEYS, "seed", "run_timeout_s", "microbench_s", "microbench_max_age_s", "protocol")
DEFAULT_MICROBENCH_S = 0.5
MAX_MICROBENCH_S = 60.0
DEFAULT_MICROBENCH_MAX_AGE_S = 3600.0


@dataclass(frozen=True)
class Config:
    """A validated configuration (immutable). ``recipes`` holds parsed ``variants.recipes.Recipe`` objects
    (what ``variants.build.build_variants`` takes); ``recipe_tables`` the raw tables they came from."""

    preset: str = DEFAULT_PRESET
    model_dir: Path | None = None
    voice: str | None = None
    model: str | None = None
    model_config: Mapping[str, Any] | None = None
    variants: tuple = ()
    runtimes: tuple = DEFAULT_RUNTIMES
    recipe_tables: Mapping[str, Any] = field(default_factory=dict)
    recipes: Mapping[str, Any] = field(default_factory=dict)
    devices: tuple = DEFAULT_DEVICES
    inventory: Path | None = None
    budgets: Path | None = None
    store: Path | str | None = None  # a SQLite file, or a postgresql:// URL
    out_dir: Path = Path(DEFAULT_OUT_DIR)
    seed: int = 0
    run_timeout_s: float = DEFAULT_RUN_TIMEOUT_S
    microbench_s: float = DEFAULT_MICROBENCH_S
    microbench_max_age_s: float = DEFAULT_MICROBENCH_MAX_AGE_S
    protocol: Protocol = field(default_factory=Protocol)
    source: str = field(default="defaults", compare=False)

    def to_dict(self) -> dict:
        """JSON-able form (stored with each run); ``load_config(None, data=...)`` reads it back."""
        proto = dataclasses.asdict(self.protocol)
        proto["sentences"] = list(proto["sentences"])
        d: dict[str, Any] = {
            "version": CONFIG_VERSION, "preset": self.preset, "model": self.model,
            "model_dir": None if self.model_dir is None else str(self.model_dir), "voice": self.voice,
            "model_config": None if self.model_config is None else dict(self.model_config),
            "variants": list(self.variants), "runtimes": list(self.runtimes),
            "recipes": {k: v for k, v in self.recipe_tables.items()},
            "devices": list(self.devices), "seed": self.seed, "run_timeout_s": self.run_timeout_s,
            "microbench_s": self.microbench_s, "microbench_max_age_s": self.microbench_max_age_s,
            "protocol": proto,
        }
        for key in _PATH_KEYS:
            value = getattr(self, key)
            d[key] = None if value is None else str(value)
        if self.out_dir == Path(DEFAULT_OUT_DIR):
            d["out_dir"] = None  # the default stays relative to where edgebench runs
        return {k: v for k, v in d.items() if v is not None}

    def with_overrides(self, **overrides: Any) -> Config:
        """A new Config with command-line overrides applied and validated (relative paths: to the cwd)."""
        data = self.to_dict()
        for key, value in overrides.items():
            if key == "protocol" and isinstance(value, Protocol):
                value = dataclasses.asdict(value)
                value["sentences"] = list(value["sentences"])
            elif key == "store" and isinstance(value, str) and "://" in value:
                pass  # a database URL, not a path
            elif key in (*_PATH_KEYS, "model_dir") and value is not None:
                value = str(Path(value).absolute())
            elif key in ("variants", "devices", "runtimes") and value is not None:
                value = list(value)
            data[key] = value
        return parse_config(data, f"{self.source} (with command-line options)", base_dir=Path.cwd())


def default_config_path() -> Path:
    return Path.cwd() / DEFAULT_CONFIG_NAME


def load_config(
    path: str | Path | None = None, *, data: Mapping[str, Any] | None = None, source: str | None = None
) -> Config:
    """Read and validate ``path`` (None: ./edgebench.toml if present, else the defaults), or ``data``."""
    if data is not None:
        return parse_config(data, source or "config", base_dir=Path.cwd())
    if path is None:
        candidate = default_config_path()
        if not candidate.is_file():
            return parse_config({}, "defaults", base_dir=Path.cwd())
        path = candidate
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read configuration ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML ({exc})") from exc
    return parse_config(raw, source or str(path), base_dir=path.absolute().parent)


def parse_config(data: Mapping[str, Any], source: str, base_dir: Path) -> Config:
    for key in data:
        if key not in KEYS:
            raise ConfigError(source, key, f"unknown key; expected one of {', '.join(KEYS)}")
    values: dict[str, Any] = {"source": source}
    if "version" in data and (isinstance(data["version"], bool) or data["version"] != CONFIG_VERSION):
        raise ConfigError(source, "version", f"unknown configuration version {data['version']!r}; this "
                                             f"edgebench reads version {CONFIG_VERSION} (upgrade edgebench)")
    preset = data.get("preset", DEFAULT_PRESET)
    values["preset"] = _preset(source, preset)
    model = data.get("model")
    if model is not None:
        if not isinstance(model, str) or not _FACTORY.match(model):
            raise ConfigError(source, "model", "expected 'package.module:factory'")
        values["model"] = model
    if data.get("model_dir") is not None:
        if model is not None:
            raise ConfigError(source, "model_dir", "give either model_dir or model (a factory), not both")
        raw = data["model_dir"]
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(source, "model_dir", "expected the path of a ModelScope model directory")
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.is_dir():
            raise ConfigError(source, "model_dir", f"{p} is not a directory")
        values["model_dir"] = p
    if data.get("voice") is not None:
        if not isinstance(data["voice"], str) or not data["voice"].strip():
            raise ConfigError(source, "voice", "expected a voice name (see voices/voices.json)")
        if data.get("model_dir") is None:
            raise ConfigError(source, "voice", "needs model_dir (a voice of a ModelScope model directory)")
        values["voice"] = data["voice"]
    model_config = data.get("model_config")
    if model_config is not None:
        if not isinstance(model_config, Mapping):
            raise ConfigError(source, "model_config", "expected a table")
        values["model_config"] = dict(model_config)
    tables = data.get("recipes", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(source, "recipes", "expected tables like [recipes.NAME]")
    values["recipe_tables"] = dict(tables)
    values["recipes"] = _recipes(source, tables)
    variants = _str_list(source, "variants", data["variants"]) if "variants" in data else None
    values["variants"] = tuple(variants if variants is not None else _default_variants())
    _check_variants(source, values["variants"], values["recipes"])
    if "runtimes" in data:
        values["runtimes"] = _runtimes(source, data["runtimes"])
    values["devices"] = tuple(_str_list(source, "devices", data.get("devices", list(DEFAULT_DEVICES))))
    for key in _PATH_KEYS:
        if data.get(key) is not None:
            if not isinstance(data[key], str) or not data[key].strip():
                raise ConfigError(source, key, "expected a path (a non-empty string)")
            if key == "store" and "://" in data[key]:
                values[key] = _store_url(source, data[key])
                continue
            p = Path(data[key]).expanduser()
            values[key] = p if p.is_absolute() else base_dir / p
    if "seed" in data:
        seed = data["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(source, "seed", "expected an integer >= 0")
        values["seed"] = seed
    if "run_timeout_s" in data:
        t = data["run_timeout_s"]
        if (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0
                or t > MAX_RUN_TIMEOUT_S):
            raise ConfigError(source, "run_timeout_s", f"expected a number of seconds > 0 and <= "
                                                       f"{MAX_RUN_TIMEOUT_S:.0f} (7 days), got {t!r}")
        values["run_timeout_s"] = float(t)
    for key, most in (("microbench_s", MAX_MICROBENCH_S), ("microbench_max_age_s", MAX_RUN_TIMEOUT_S)):
        if key in data:
            t = data[key]
            if (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0
                    or t > most):
                raise ConfigError(source, key, f"expected seconds >= 0 and <= {most:.0f}, got {t!r}")
            values[key] = float(t)
    values["protocol"] = _protocol(source, data.get("protocol", {}))
    return Config(**values)


def _default_variants() -> tuple:
    from variants.recipes import DEFAULT_VARIANTS

    return tuple(DEFAULT_VARIANTS)


def _preset(source: str, preset: Any) -> str:
    if not isinstance(preset, str):
        raise ConfigError(source, "preset", "expected a preset name (string)")
    from devices.ondevice.models.presets import PRESETS

    if preset not in PRESETS:
        raise ConfigError(source, "preset", f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return preset


def _str_list(source: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(source, key, "expected a list of non-empty strings")
    if not value:
        raise ConfigError(source, key, "expected at least one entry")
    return [v.strip() for v in value]


def _recipes(source: str, tables: Mapping[str, Any]) -> dict:
    from variants.recipes import parse_recipe

    return {name: parse_recipe(table, f"{source}: recipes.{name}", name=name)
            for name, table in tables.items()}


def _runtimes(source: str, value: Any) -> tuple:
    from devices.ondevice.artifact import RUNTIMES

    names = _str_list(source, "runtimes", value)
    for i, name in enumerate(names):
        if name not in RUNTIMES:
            raise ConfigError(source, f"runtimes[{i}]",
                              f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    if len(set(names)) != len(names):
        raise ConfigError(source, "runtimes", "a runtime is listed twice")
    return tuple(names)


def _check_variants(source: str, variants: tuple, recipes: Mapping[str, Any]) -> None:
    from variants.recipes import BUILTIN_VARIANTS

    known = set(BUILTIN_VARIANTS) | set(recipes)
    for i, name in enumerate(variants):
        if name not in known:
            raise ConfigError(source, f"variants[{i}]",
                              f"unknown variant {name!r}; known: {', '.join(sorted(known))} "
                              "(define new ones under [recipes.NAME])")
    if len(set(variants)) != len(variants):
        raise ConfigError(source, "variants", "a variant is listed twice")


def _protocol(source: str, table: Any) -> Protocol:
    if not isinstance(table, Mapping):
        raise ConfigError(source, "protocol", "expected a table")
    names = {f.name for f in dataclasses.fields(Protocol)}
    for key in table:
        if key not in names:
            raise ConfigError(source, f"protocol.{key}",
                              f"unknown key; expected one of {', '.join(sorted(names))}")
    values = dict(table)
    if "sentences" in values:
        values["sentences"] = tuple(_str_list(source, "protocol.sentences", values["sentences"]))
    try:
        return Protocol(**values)
    except (DevicesError, TypeError, ValueError) as exc:
        message = str(exc)
        key = next((k for k in values if k in message), None)
        raise ConfigError(source, f"protocol.{key}" if key else "protocol", message) from None


def check_output_dir(path: str | Path, what: str) -> Path:
    """``path`` (absolute) if it is a writable directory or can be created as one; else a one-line UserError
    naming ``what`` (a flag such as ``--out`` or a configuration key). Checked before anything is written,
    so that a report directory that cannot be written is found before the state directory exists and
    before anything is measured, not after."""
    from harness.errors import UserError

    p = Path(path).expanduser().absolute()
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise UserError(f"{what}: {path} exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{what}: {path}: the directory is not writable")
        return p
    ancestor = p.parent
    while not (ancestor.exists() or ancestor.is_symlink()) and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{what}: {path} cannot be created: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {path} cannot be created: {ancestor} is not writable")
    return p


def _store_url(source: str, url: str) -> str:
    from harness.store import StoreError, backend_for

    try:
        backend_for(url)
    except StoreError as exc:
        raise ConfigError(source, "store", str(exc)) from None
    if urlsplit(url).password is not None:   # it would be stored with every run's configuration
        raise ConfigError(source, "store", "a password in the store URL; put it in ~/.pgpass or PGPASSWORD")
    return url


def resolve_store_path(store: str | Path | None = None, config: str | Path | None = None) -> Path | str:
    """The results store a command uses: ``--store``, else the configuration's ``store`` (``--config`` or
    ./edgebench.toml when present), else the state directory's ``results.sqlite``. A ``postgresql://`` URL
    comes back as a string, a file as a Path."""
    from harness import paths
    from harness.store import is_url

    if store is not None:
        return str(store) if is_url(str(store)) else Path(store)
    if config is not None or default_config_path().is_file():
        cfg = load_config(config)
        if cfg.store is not None:
            return cfg.store
    return paths.results_db_path()


def open_store(location: Path | str, *, create: bool):
    """``Store`` at a resolved location. A SQLite file that does not exist yet is created (mode 0600) when
    ``create``, else a UserError; a database URL is opened as it is (its server says what is wrong)."""
    from harness import paths
    from harness.errors import UserError
    from harness.store import Store, is_url

    if is_url(location):
        if urlsplit(str(location)).password is not None:
            raise UserError("--store: a password in the store URL; put it in ~/.pgpass or PGPASSWORD (a "
                            "password in a URL shows in the process list and would be stored with the run)")
        return Store(str(location))
    path = Path(location)
    if create:
        return Store(paths.private_file(path))
    if not path.is_file():
        raise UserError(f"{path}: no results store here; run `edgebench run` first or pass --store")
    return Store(path)


def open_existing_store(store: str | Path | None = None, config: str | Path | None = None):
    """``Store`` on the resolved location; UserError if there is no store file there yet."""
    return open_store(resolve_store_path(store, config), create=False)
