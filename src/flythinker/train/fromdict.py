"""Plain dicts (YAML files, ``KEY=VALUE`` overrides) into validated dataclasses.

Values are coerced to the annotated field types (YAML 1.1 reads ``5e-6`` as a string), and
every problem is a :class:`UserError` that names the dotted key (``train.lr``), with a
"did you mean" for a misspelt key.

    >>> from flythinker.train.config import LoraSpec
    >>> from_dict(LoraSpec, {"r": "8"}).r
    8
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing

from flythinker.errors import UserError


class ConfigError(UserError):
    """A bad value; ``key`` is the field name, prefixed with its section path by the loader."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def suggest(key: str, names) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(names))})"


def _coerce(value, tp, key: str):
    """Convert a YAML value to the annotated type ``tp`` (YAML 1.1 reads 5e-6 as a string)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _coerce(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key + ".")
    if value is None:
        raise UserError(f"{key}: must not be null")
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str):
            try:
                value = float(value) if tp is float else int(value)
            except ValueError:
                raise UserError(f"{key}: must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: must be a number, got {value!r}")
        if tp is int and not float(value).is_integer():
            raise UserError(f"{key}: must be an integer, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{key}: must be a string, got {value!r}")
        return str(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def from_dict(cls, raw: dict, prefix: str = ""):
    """A ``cls`` dataclass from a plain dict; unknown keys and bad values name their key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise UserError(f"{prefix}{key}: unknown key{suggest(str(key), fields)}")
    missing = [
        n
        for n, f in fields.items()
        if n not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"{prefix}{missing[0]}: required key is missing")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(prefix + e.key, e.message) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a raw config dict: ``["train.lr=1e-4", "model.lam=0.3"]``.

    Values are parsed as YAML (``null``, ``true``, ``[1, 2]``, numbers); a missing section is
    created, so ``model.generator.lora.r=8`` turns LoRA on.

    >>> apply_overrides({"train": {"lr": 1.0}}, ["train.lr=0.5", "data.path=x"])
    {'train': {'lr': 0.5}, 'data': {'path': 'x'}}
    """
    import yaml

    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        value = yaml.safe_load(text) if text.strip() else None
        node, parts = raw, key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                if part in node and node[part] is not None:
                    raise UserError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


# --- checks the config sections share -------------------------------------------------------


def _number(
    obj, name: str, *, low: float = 0.0, strict: bool = False, integer: bool = False, optional: bool = False
) -> None:
    """Check ``obj.name`` is a finite number ≥ low (> low when strict); raise naming it."""
    value = getattr(obj, name)
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (not integer or float(value).is_integer())
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(name, f"must be {kind} {'>' if strict else '>='} {low:g}, got {value!r}")


def _choice(obj, name: str, choices) -> None:
    if getattr(obj, name) not in choices:
        raise ConfigError(name, f"must be one of {', '.join(map(str, choices))}, got {getattr(obj, name)!r}")
