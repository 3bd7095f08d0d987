"""Experiment configs: `configs/x.py:arg` files with `--config.key=value` overrides.

Each config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`.
The argument is a small string such as `runlocal` or `variant=600M,runlocal`;
`parse_arg` turns it into a dict so config files stay short. The loaded config is
locked: an override of a key that does not exist, or a value of the wrong type, is a
`UsageError` naming the key, never a silently ignored typo.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from t2i.errors import UsageError


def parse_arg(arg: str | None) -> dict[str, Any]:
    """`"variant=600M,runlocal"` -> `{"variant": "600M", "runlocal": True}`."""
    out: dict[str, Any] = {}
    if not arg:
        return out
    for part in arg.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.strip()] = value.strip()
        else:
            out[part] = True
    return out


def _import_config_module(path: str):
    if not os.path.isfile(path):
        raise UsageError(f"config file not found: {path}")
    name = "t2i_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UsageError(f"config file {path} defines no get_config(arg)")
    return module


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parses an override string into the type of the value it replaces."""
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise UsageError(f"bad value for config key '{key}': expected a boolean, got '{text}'")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise UsageError(f"bad value for config key '{key}': expected {type(current).__name__}, got '{text}'") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
        value = (value,)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and not isinstance(value, type(current)):
        if isinstance(current, (int, float)) and isinstance(value, bool):
            pass
        else:
            raise UsageError(f"bad value for config key '{key}': expected {type(current).__name__}, got '{text}'")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets `config.<key>` (dotted) from the string `text`, type-checked."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
            raise UsageError(f"unknown config key '{key}'" + (f" (known here: {known})" if known else ""))
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise UsageError(f"config key '{key}' is a group; set one of its fields instead")
    value = _parse_value(text, current, key)
    try:
        node[parts[-1]] = value
    except (TypeError, ValueError) as error:
        raise UsageError(f"bad value for config key '{key}': {text!r} ({error})") from None


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and applies `key=value` overrides; returns it locked.

    `overrides` are strings of the form `key=value` (the `--config.` prefix already
    removed) or `--config.key=value`.
    """
    path, _, arg = spec.partition(":")
    module = _import_config_module(path)
    try:
        config = module.get_config(arg or None)
    except UsageError:
        raise
    except (KeyError, ValueError, TypeError) as error:
        raise UsageError(f"config {spec}: bad argument '{arg}': {error}") from None
    config.lock()
    for item in overrides:
        item = item[len("--config.") :] if item.startswith("--config.") else item
        if "=" not in item:
            raise UsageError(f"config override '{item}' must be key=value")
        key, text = item.split("=", 1)
        apply_override(config, key, text)
    return config


def to_json(config: ml_collections.ConfigDict) -> dict:
    """A JSON-safe dict of the config, stored beside every checkpoint."""
    return json.loads(config.to_json_best_effort())
