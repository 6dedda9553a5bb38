"""Parsing for the typed configuration: ``key=value`` overrides, dict merging and flattening,
and :func:`build`, which casts and validates a nested dict into the frozen dataclass sections
of :mod:`fedft.config` (every error a :class:`~fedft.errors.ConfigError` naming the field)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from fedft.errors import ConfigError


def _norm(key: str) -> str:
    return key.strip().replace("-", "_")


def _assign(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [_norm(p) for p in dotted.split(".")]
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"key {dotted!r}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.lr=0.01", ...]`` -> nested dict of strings (cast later by :func:`build`)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _assign(tree, key, value.strip())
    return tree


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``top`` wins."""
    out = dict(base)
    for k, v in top.items():
        k = _norm(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": v}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _cast(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"bad value {value!r} for {name}; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _cast(value, args[0], name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"bad value {value!r} for {name}; allowed: true, false")
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"bad value {value!r} for {name}; expected {tp.__name__}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"bad value for {name}; expected a string")
        return str(value)
    raise ConfigError(f"unsupported type for {name}")


MOVED = {"method.sfprompt": "federation.sfprompt"}  # options tables that moved, for a helpful error


def _options_table(cls: type, key: str, full: str, names: set[str]) -> type:
    """The options dataclass of table ``key`` in section ``cls`` (an error naming the valid keys)."""
    from fedft.options import option_names, options_class

    section = getattr(cls, "__options_section__", None)
    found = options_class(section, key) if section else None
    if found is None:
        if full in MOVED:
            raise ConfigError(f"[{full}] is now [{MOVED[full]}]; rename the table or the --set key")
        valid = sorted(names - {"options"}) + (option_names(section) if section else [])
        where = f"[{full.rpartition('.')[0]}]" if "." in full else "the top level"
        raise ConfigError(f"unknown config key {full!r}; valid keys in {where}: {', '.join(valid)}")
    return found


def build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, casting and validating every field. A section
    with ``__options_section__`` also takes the options tables its plugins declare."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{path.rstrip('.')}] must be a table of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _norm(raw_key)
        full = f"{path}{key}"
        if key not in names or key == "options":
            tables[key] = build(_options_table(cls, key, full, names), value, full + ".")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, full + ".")
        else:
            kwargs[key] = _cast(value, tp, full)
    if tables:
        kwargs["options"] = tuple(sorted(tables.items()))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad config in [{path.rstrip('.') or 'top level'}]: {e}") from None


def to_plain(obj: Any) -> Any:
    """A config dataclass as a plain nested dict; ``options`` pairs become tables of the section."""
    if not dataclasses.is_dataclass(obj):
        return obj
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "options" and hasattr(obj, "__options_section__"):
            out.update({name: to_plain(opts) for name, opts in value})
        else:
            out[f.name] = to_plain(value)
    return out
