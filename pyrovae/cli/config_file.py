"""Config files for ``pyrovae train --config FILE``: TOML, YAML or JSON, one training option per key.

Keys are :class:`~pyrovae.training.config.TrainConfig` field names (``z_dim``) or their flags
(``z-dim``); flags given on the command line override the file. ``--print-config`` writes the
resolved config as TOML, which ``--config`` reads back to the same run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from pyrovae.errors import PyrovaeError

SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def read_config_file(path: str) -> dict[str, Any]:
    """The options in the file at ``path`` (a TOML, YAML or JSON mapping), keys as field names."""
    from pyrovae.training.config import TrainConfig

    p = Path(path)
    if not p.is_file():
        raise PyrovaeError(f"--config {path}: no such file")
    if p.suffix.lower() not in SUFFIXES:
        raise PyrovaeError(f"--config {path}: give a .toml, .yaml or .json file")
    text = p.read_text()
    try:
        data = _parse(p.suffix.lower(), text)
    except PyrovaeError:
        raise
    except Exception as exc:  # each parser raises its own error type
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PyrovaeError(f"--config {path} is not valid {p.suffix[1:].upper()}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PyrovaeError(f"--config {path} must hold a mapping of option = value, not a "
                           f"{type(data).__name__}")
    known = set(TrainConfig().to_dict())
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise PyrovaeError(f"--config {path}: unknown option {key!r}; the options are "
                               f"{', '.join(sorted(known))}")
        out[name] = value
    return out


def _parse(suffix: str, text: str) -> Any:
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        return tomllib.loads(text)
    if suffix == ".json":
        return json.loads(text)
    try:
        import yaml
    except ImportError:
        raise PyrovaeError("YAML config files need PyYAML: pip install pyyaml (or pyrovae[config]), "
                           "or write the config as TOML") from None
    return yaml.safe_load(text)


def to_toml(config: dict[str, Any]) -> str:
    """``config`` as TOML (``None`` values, which TOML cannot hold, are left out: they are the
    defaults); a nested ``extra`` mapping becomes an ``[extra]`` table."""
    lines, tables = [], []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, dict):
            if value:
                tables.append(f"\n[{key}]")
                tables += [f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None]
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise PyrovaeError(f"cannot write {value!r} ({type(value).__name__}) to a config file")
