"""Budgets: the thresholds a run must meet, from ``budgets.toml`` (versioned) over built-in defaults.

```toml
version = 1

[budgets]                       # every device and variant (merged over the built-in defaults below)
acoustic_size_mb = 100          # torch.save(state_dict) bytes / 1e6
latency_p90_ms_short = 800      # p90 (nearest rank) of total synthesis time, short sentences
peak_rss_mib = 512
mos = 3.8
emotion_id_accuracy = 0.90
rtf = false                     # false switches a budget off

[class.pi4]                     # devices whose inventory entry has budget_class = "pi4"
latency_p90_ms_short = 1500

[variant.pruned]                # one variant, on every device and runtime (wins over [class.*])
mos = 3.6

[variant."pruned@onnxruntime"]  # that variant on onnxruntime only (wins over [variant.pruned])
latency_p90_ms_short = 600

[regression]                    # regression detection settings (harness.regress)
min_ratio = 1.05                # smallest slowdown (ratio of medians) worth failing for
alpha = 0.01                    # one-sided Mann-Whitney U significance level
min_samples = 10                # fewer samples on either side: no verdict for that class
device_drift = "regressed"      # a regression attributed to device drift (harness.attribution) stays
                                # "regressed" (exit 1), or is "disturbed" (exit 2: measure again)
```

Budget names and units come from the metric registry (``harness.vocabulary``: ``Metric.budget_key``,
``display_unit``). Precedence, most specific first: ``[variant.NAME]``, ``[class.NAME]``, ``[budgets]``,
built-in defaults.
Unknown metric names, unknown device-class or variant names (when the caller knows the valid ones) and
bad values raise ConfigError naming the file and the key.

Budget file versions (``BUDGETS_VERSION``): 1 (this layout).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.errors import ConfigError
from harness.vocabulary import BUDGET_METRICS, DEFAULT_BUDGETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUDGETS_VERSION = 1


@dataclass(frozen=True)
class RegressionSettings:
    min_ratio: float = 1.05
    alpha: float = 0.01
    min_samples: int = 10
    device_drift: str = "regressed"     # DEVICE_DRIFT_VERDICTS: what a regression the device explains becomes

    def to_dict(self) -> dict:
        return {"min_ratio": self.min_ratio, "alpha": self.alpha, "min_samples": self.min_samples,
                "device_drift": self.device_drift}


#: What a regression attributed to device drift can become: still "regressed" (the default: the exit code
#: rules do not change), or "disturbed" (exit 2: the board, not the model, needs attention; measure again).
DEVICE_DRIFT_VERDICTS = ("regressed", "disturbed")


@dataclass(frozen=True)
class Budgets:
    """Resolved budgets: defaults plus per-class and per-variant overrides (None = switched off)."""

    defaults: Mapping[str, float | None] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    classes: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    regression: RegressionSettings = field(default_factory=RegressionSettings)
    source: str = "built-in defaults"

    def limit(self, metric: str, device_class: str | None = None, variant: str | None = None) -> float | None:
        """The budget ``metric`` (a budgets.toml key; display units) on a device of ``device_class`` for
        ``variant`` (None: no budget)."""
        if metric not in BUDGET_METRICS:
            raise KeyError(f"unknown budget {metric!r}")
        # ``quantized@onnxruntime`` takes [variant."quantized@onnxruntime"], then [variant.quantized]
        base = (variant or "").split("@", 1)[0]
        tables = (self.variants.get(variant or ""), self.variants.get(base) if base != variant else None,
                  self.classes.get(device_class or ""))
        for table in tables:
            if table is not None and metric in table:
                return table[metric]
        return self.defaults.get(metric)

    def resolved(self, device_class: str | None = None, variant: str | None = None) -> dict[str, float]:
        """budget key -> budget for one (device class, variant), switched off ones left out, in order."""
        out = {}
        for name in BUDGET_METRICS:
            value = self.limit(name, device_class, variant)
            if value is not None:
                out[name] = value
        return out

    def to_dict(self) -> dict:
        """The budgets.toml layout (None stands for ``false``); ``from_dict`` reads it back."""
        return {
            "version": BUDGETS_VERSION,
            "budgets": dict(self.defaults),
            "class": {k: dict(v) for k, v in self.classes.items()},
            "variant": {k: dict(v) for k, v in self.variants.items()},
            "regression": self.regression.to_dict(),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "budgets") -> Budgets:
        return parse_budgets(data, source, merge_defaults=False)


def default_budgets() -> Budgets:
    return Budgets()


def load_budgets(
    path: str | Path | None = None,
    *,
    device_classes: Iterable[str] | None = None,
    variants: Iterable[str] | None = None,
) -> Budgets:
    """Budgets from ``path`` (None: the built-in defaults). ConfigError naming file and key if invalid.

    ``device_classes`` / ``variants``: the valid names (from the inventory and the configuration); a
    ``[class.X]`` or ``[variant.X]`` table with another name is an error. None: any name is accepted.
    """
    if path is None:
        return default_budgets()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read budgets file ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML ({exc})") from exc
    return parse_budgets(data, str(path), device_classes=device_classes, variants=variants)


def parse_budgets(
    data: Mapping[str, Any],
    source: str,
    *,
    device_classes: Iterable[str] | None = None,
    variants: Iterable[str] | None = None,
    merge_defaults: bool = True,
) -> Budgets:
    known_top = ("version", "budgets", "class", "variant", "regression", "source")
    for key in data:
        if key not in known_top:
            raise ConfigError(source, key, f"unknown key; expected one of {', '.join(known_top[:-1])}")
    if "version" not in data:
        raise ConfigError(source, "version", f"missing; add `version = {BUDGETS_VERSION}` at the top")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(source, "version", "expected an integer")
    if version != BUDGETS_VERSION:
        raise ConfigError(
            source, "version",
            f"unknown budgets format version {version}; this edgebench reads version {BUDGETS_VERSION} "
            "(upgrade edgebench, or rewrite the file in the version 1 layout)",
        )
    defaults: dict[str, float | None] = dict(DEFAULT_BUDGETS) if merge_defaults else {}
    defaults.update(_metric_table(source, "budgets", data.get("budgets", {})))
    classes = _named_tables(source, "class", data.get("class", {}), device_classes, "device class")
    variant_tables = _named_tables(source, "variant", data.get("variant", {}), variants, "variant")
    regression = _regression(source, data.get("regression", {}))
    return Budgets(defaults, classes, variant_tables, regression, source=str(data.get("source", source)))


def _metric_table(source: str, prefix: str, table: Any) -> dict[str, float | None]:
    if not isinstance(table, Mapping):
        raise ConfigError(source, prefix, "expected a table")
    out: dict[str, float | None] = {}
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if name not in BUDGET_METRICS:
            raise ConfigError(source, key, f"unknown metric; known metrics: {', '.join(BUDGET_METRICS)}")
        if value is False or value is None:
            out[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(source, key, "expected a number (or false to switch the budget off)")
        if value < 0:
            raise ConfigError(source, key, "expected a number >= 0")
        out[name] = float(value)
    return out


def _named_tables(
    source: str, prefix: str, tables: Any, valid: Iterable[str] | None, what: str
) -> dict[str, dict[str, float | None]]:
    if not isinstance(tables, Mapping):
        raise ConfigError(source, prefix, f"expected tables like [{prefix}.NAME]")
    valid_names = None if valid is None else set(valid)
    out = {}
    for name, table in tables.items():
        if valid_names is not None and name not in valid_names:
            known = ", ".join(sorted(valid_names)) or "none"
            raise ConfigError(source, f"{prefix}.{name}", f"unknown {what}; known: {known}")
        out[name] = _metric_table(source, f"{prefix}.{name}", table)
    return out


def _regression(source: str, table: Any) -> RegressionSettings:
    if not isinstance(table, Mapping):
        raise ConfigError(source, "regression", "expected a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"regression.{key}"
        if key == "min_ratio":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1.0:
                raise ConfigError(source, where, "expected a number >= 1.0")
        elif key == "alpha":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(source, where, "expected a number between 0 and 1")
        elif key == "min_samples":
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(source, where, "expected an integer >= 2")
        elif key == "device_drift":
            if value not in DEVICE_DRIFT_VERDICTS:
                raise ConfigError(source, where, f"expected one of {', '.join(DEVICE_DRIFT_VERDICTS)}, "
                                                 f"got {value!r}")
        else:
            raise ConfigError(source, where, "unknown key; expected min_ratio, alpha, min_samples or "
                                             "device_drift")
        values[key] = value
    return RegressionSettings(**values)
