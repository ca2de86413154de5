"""Typed experiment configs: parsing ``key=value`` text, validation, resolution and hashing.

Resolution order (later wins): the config dataclass defaults -> ``preset.set`` -> ``--set``.
The grid is ``preset.sweep`` updated with ``--sweep`` (the CLI wins on the same key).

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``list[T]``, ``tuple[T, ...]``,
``Literal[...]`` and ``T | None`` of these. Text values are parsed by the field's type:
``bool`` accepts true/false/yes/no/1/0, ``None`` is spelled ``none`` or ``null``, lists are
``[1,2,3]`` (or ``1,2,3`` in ``--set``). In ``--sweep`` values are split on top-level commas,
so list values must be bracketed: ``--sweep widths=[8,8],[16,16]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

__all__ = [
    "RUN_OPTION_KEYS",
    "ResolvedConfig",
    "canonical_json",
    "cell_hash",
    "coerce",
    "config_hash",
    "field_types",
    "make_config",
    "parse_assignment",
    "parse_value",
    "resolve",
    "split_top_level",
]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


def field_types(config_cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass (in field order)."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_cls)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets/parentheses: ``"[1,2],[3]" -> ["[1,2]", "[3]"]``."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse the command-line text ``text`` for field ``key`` of type ``tp``.

    Raises TypeError naming the key, the expected type and the text on a wrong value.
    """
    text = text.strip()
    optional, inner = _is_optional(tp)
    if optional:
        if text.lower() in _NONE:
            return None
        return parse_value(text, inner, key)
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if tp is int:
            return _integer(text, key)
        if tp is float:
            return float(text)
        if tp is str or tp is Any:
            return text
        if origin is Literal:
            choices = typing.get_args(tp)
            for c in choices:
                if str(c) == text:
                    return c
            raise TypeError(f"--set/--sweep {key}: expected one of {list(choices)}, got {text!r}")
        if origin in (list, tuple):
            body = text
            if body[:1] in "[(" and body[-1:] in "])":
                body = body[1:-1]
            items = [] if not body.strip() else split_top_level(body)
            args = typing.get_args(tp)
            elem = args[0] if args else Any
            vals = [parse_value(it, elem, key) for it in items]
            return tuple(vals) if origin is tuple else vals
    except TypeError:
        raise
    except ValueError:
        raise TypeError(f"config key {key!r}: expected a value of type {_type_name(tp)}, "
                        f"got {text!r}") from None
    raise TypeError(f"config key {key!r}: unsupported field type {_type_name(tp)} "
                    "(use int/float/bool/str/list/tuple/Literal)")


def _integer(value: str | float, key: str) -> int:
    """An int from text or a float that holds a whole number (``"3"``, ``"1e3"``, ``3.0``);
    TypeError naming ``key`` for ``2.5``, ``nan`` or ``"x"``."""
    f = math.nan
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            f = float(value)
        except ValueError:
            pass
    elif isinstance(value, float):
        f = value
    if math.isfinite(f) and f.is_integer():
        return int(f)
    raise TypeError(f"config key {key!r}: expected a value of type int (a whole number), "
                    f"got {value!r}")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check a Python ``value`` (from a preset, JSON or code) against ``tp``; return it normalized.

    ints are accepted for floats (converted), JSON lists for tuples; bools are NOT accepted as
    ints. Text is parsed with :func:`parse_value`. Raises TypeError naming ``key``.
    """
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise TypeError(f"config key {key!r}: None is not allowed for type {_type_name(tp)}")
    if optional:
        return coerce(value, inner, key)
    if isinstance(value, str) and tp is not str and tp is not Any \
            and typing.get_origin(tp) is not Literal:
        return parse_value(value, tp, key)
    bad = TypeError(f"config key {key!r}: expected a value of type {_type_name(tp)}, "
                    f"got {value!r} ({type(value).__name__})")
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float):
            return _integer(value, key)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(f"config key {key!r}: expected one of {list(typing.get_args(tp))}, "
                        f"got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        vals = [coerce(v, elem, key) for v in value]
        return tuple(vals) if origin is tuple else vals
    raise TypeError(f"config key {key!r}: unsupported field type {_type_name(tp)}")


def _unknown(key: str, types_: dict[str, Any], where: str) -> ValueError:
    return ValueError(f"{where}: unknown config key {key!r}; valid keys: "
                      f"{', '.join(types_)}")


def parse_assignment(text: str, flag: str = "--set") -> tuple[str, str]:
    """``"key=value"`` -> ``("key", "value")``; ValueError naming ``flag`` otherwise."""
    if "=" not in text:
        raise ValueError(f"{flag}: expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"{flag}: empty key in {text!r}")
    return key, value


@dataclass(frozen=True)
class ResolvedConfig:
    """The base config (every field, as JSON-able values) and the grid to sweep over it."""

    base: dict[str, Any]
    sweep: dict[str, list]

    def to_dict(self) -> dict[str, Any]:
        return {"config": _jsonable(self.base), "sweep": _jsonable(self.sweep)}


def resolve(
    config_cls: type,
    preset: Any = None,
    sets: dict[str, Any] | list[str] | None = None,
    sweeps: dict[str, Any] | list[str] | None = None,
) -> ResolvedConfig:
    """defaults -> ``preset.set`` -> ``sets``; grid = ``preset.sweep`` updated by ``sweeps``.

    ``sets``/``sweeps`` are either lists of CLI strings (``"key=value"``, ``"key=v1,v2"``) or
    dicts (values as text or Python values; sweep values as lists).
    Raises ValueError on an unknown key (listing valid keys) or an empty sweep, TypeError on a
    value of the wrong type.
    """
    types_ = field_types(config_cls)
    base: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            base[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            base[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            raise TypeError(f"config {config_cls.__name__}: field {f.name!r} needs a default")
    sweep: dict[str, list] = {}
    if preset is not None:
        for k, v in preset.set.items():
            if k not in types_:
                raise _unknown(k, types_, "preset")
            base[k] = coerce(v, types_[k], k)
        for k, vs in preset.sweep.items():
            if k not in types_:
                raise _unknown(k, types_, "preset sweep")
            sweep[k] = [coerce(v, types_[k], k) for v in vs]
    if isinstance(sets, list):
        sets = dict(parse_assignment(s, "--set") for s in sets)
    for k, v in (sets or {}).items():
        if k not in types_:
            raise _unknown(k, types_, "--set")
        base[k] = parse_value(v, types_[k], k) if isinstance(v, str) else coerce(v, types_[k], k)
    if isinstance(sweeps, list):
        sweeps = dict(parse_assignment(s, "--sweep") for s in sweeps)
    _check_set_vs_sweep(sets or {}, sweeps or {}, dict(preset.sweep) if preset is not None else {})
    for k, vs in (sweeps or {}).items():
        if k not in types_:
            raise _unknown(k, types_, "--sweep")
        if isinstance(vs, str):
            items = [] if not vs.strip() else split_top_level(vs)
            if any(not it for it in items):
                raise ValueError(f"--sweep {k}: empty value in {vs!r}")
            vals = [parse_value(it, types_[k], k) for it in items]
        else:
            vals = [coerce(v, types_[k], k) for v in vs]
        if not vals:
            raise ValueError(f"--sweep {k}: empty sweep; give at least one value "
                             f"(--sweep {k}=v1,v2,...)")
        sweep[k] = vals
    for k, vals in sweep.items():
        if not vals:
            raise ValueError(f"sweep over {k!r} is empty")
    return ResolvedConfig(base={k: _jsonable(v) for k, v in base.items()},
                          sweep={k: [_jsonable(v) for v in vs] for k, vs in sweep.items()})


def _check_set_vs_sweep(sets: dict[str, Any], sweeps: dict[str, Any],
                        preset_sweep: dict[str, list]) -> None:
    """A ``--set`` on a swept key would be silently overridden by the sweep: refuse it.

    ``--set k=v`` where the preset sweeps ``k`` -> ValueError saying to use ``--sweep k=v`` (which
    replaces the preset's sweep); ``--set k`` together with ``--sweep k`` -> ValueError too.
    """
    for k, v in sets.items():
        if k in sweeps:
            raise ValueError(f"--set {k}={v}: {k!r} is also given to --sweep; give it once "
                             f"(--sweep {k}=v1,v2,... for several values, --set {k}=v for one)")
        if k in preset_sweep:
            vals = ", ".join(str(x) for x in preset_sweep[k])
            raise ValueError(f"--set {k}={v}: {k!r} is swept by the preset ({vals}), which would "
                             f"override it; use --sweep {k}={v} to replace the preset's sweep")


#: Former config keys that are run options now (``--threads``, ``--device``, ``--workers``): stored
#: configs of older runs may hold them; :func:`make_config` drops them when the class lacks them.
RUN_OPTION_KEYS = ("threads", "device", "workers")


def make_config(config_cls: type, values: dict[str, Any]) -> Any:
    """Instantiate ``config_cls`` from (JSON) values, coercing each by its field type.

    Keys of :data:`RUN_OPTION_KEYS` that ``config_cls`` has no field for are dropped (stores
    written before ``threads`` became a run option keep loading).
    """
    types_ = field_types(config_cls)
    values = {k: v for k, v in values.items() if k in types_ or k not in RUN_OPTION_KEYS}
    unknown = [k for k in values if k not in types_]
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(types_)}")
    return config_cls(**{k: coerce(v, types_[k], k) for k, v in values.items()})


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, tuples as lists (the basis of every hash)."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=True)


def config_hash(obj: Any, n: int = 12) -> str:
    """First ``n`` hex digits of SHA-256 of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def cell_hash(config: dict[str, Any], report_settings: Any = (), n: int = 12) -> str:
    """The id of a cell: :func:`config_hash` of its config without the keys in
    ``report_settings`` (settings only the report reads: changing a tolerance must not change
    which cells exist, so ``lazylab report DIR --set KEY=VALUE`` can re-judge a finished run)."""
    skip = set(report_settings)
    return config_hash({k: v for k, v in config.items() if k not in skip}, n)
