"""Typed recipes: TOML files whose sections map onto nested dataclasses.

`load_recipe(path, RecipeClass, overrides)` reads a recipe, applies `--set key.path=value`
overrides (parsed as TOML values and typed by the field), fills every missing field from the
dataclass defaults, and rejects unknown keys, wrongly typed values and values outside a field's
range (declared with `bounded`) with an InputError that names the file and key. `to_toml`
writes the fully resolved config back (run folder `config.toml`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from pptkit.errors import InputError

try:
    import tomllib  # novermin (guarded: 3.11+)
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

T = TypeVar("T")


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None) -> Any:
    """A dataclass field with a default and an allowed range (checked when a recipe is read)."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt, "le": le})


def load_recipe(path: str | Path | None, cls: type[T], overrides: list[str] = ()) -> T:
    """Build `cls` from a TOML recipe (or defaults when `path` is None) plus overrides."""
    raw: dict[str, Any] = {}
    source = "recipe defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise InputError("recipe not found", path)
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"invalid TOML: {exc}", path)
    for item in overrides:
        key, value = _parse_override(item)
        _set_nested(raw, key.split("."), value)
    if overrides:
        source += " with --set overrides"
    return from_dict(cls, raw, source)


def from_dict(cls: type[T], raw: dict[str, Any], source: str, prefix: str = "") -> T:
    """Instantiate dataclass `cls` from a plain dict, checking keys and value types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(raw) - set(fields)
    if unknown:
        key = prefix + sorted(unknown)[0]
        raise InputError(f"unknown key '{key}' (valid here: {', '.join(sorted(fields))})", source)
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, source, prefix + name)
        _check_range(fields[name], kwargs[name], source, prefix + name)
    return cls(**kwargs)


def _check_range(spec: dataclasses.Field, value: Any, source: str, key: str) -> None:
    """Check a value (or each value of a table or list) against the field's declared range."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_range(spec, v, source, f"{key}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_range(spec, v, source, f"{key}[{i}]")
        return
    if value is None or dataclasses.is_dataclass(value):
        return
    ge, gt, le = (spec.metadata.get(k) for k in ("ge", "gt", "le"))
    if ge is not None and value < ge:
        raise InputError(f"'{key}' must be >= {ge}, got {value!r}", source)
    if gt is not None and value <= gt:
        raise InputError(f"'{key}' must be > {gt}, got {value!r}", source)
    if le is not None and value > le:
        raise InputError(f"'{key}' must be <= {le}, got {value!r}", source)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InputError(f"'{key}' must be a table", source)
        return from_dict(hint, value, source, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, source, key)
            except InputError:
                continue
        raise InputError(f"'{key}' has an invalid value {value!r}", source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"'{key}' must be a list, got {value!r}", source)
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"'{key}' must be a table, got {value!r}", source)
        _, vt = typing.get_args(hint)
        return {str(k): _coerce(vt, v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint)
                       and not (hint is int and isinstance(value, bool))):
        return value
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        choices = " | ".join(map(str, typing.get_args(hint)))
        raise InputError(f"'{key}' must be one of {choices}, got {value!r}", source)
    raise InputError(f"'{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}", source)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise InputError(f"--set expects key.path=value, got '{item}'", "--set")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: take it as a string
    return key, value


def _set_nested(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        raw = raw.setdefault(k, {})
        if not isinstance(raw, dict):
            raise InputError(f"'{k}' is not a table", "--set")
    raw[keys[-1]] = value


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain TOML-able containers (tuples become lists, None dropped)."""
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return clean(dataclasses.asdict(config))


def to_toml(config: Any) -> str:
    """The fully resolved config as TOML text."""
    return tomli_w.dumps(to_dict(config))
