"""Read a run config: YAML file, then `key.sub=value` overrides, then validation.

Errors are ConfigError with one line that names the file (or the override) and the full key path;
an unknown key also names the nearest valid key.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import BaseModel, ValidationError

from damoc.config.schema import RunConfig
from damoc.errors import ConfigError


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, not a YAML file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from e
    if data is None:
        raise ConfigError(f"{path}: config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a mapping of sections (candidates, data, training, ...), got a {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict[str, str]:
    """Apply `a.b.c=value` overrides in place (value parsed as YAML: numbers, booleans, lists).

    Returns {dotted key: override text} so validation errors can say which override was wrong."""
    applied: dict[str, str] = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{text}' is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            parent = ".".join(parts[:i]) or "config"
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override '{text}': {parent} is a list of {len(node)}; '{part}' is not an index in it")
                idx = int(part)
                if not last and parts[0] == "candidates" and isinstance(node[idx], str):
                    node[idx] = {"model": node[idx]}  # a candidate written as a plain string
            elif isinstance(node, dict):
                idx = part
                if not last and node.get(part) is None:
                    node[part] = {}
            else:
                raise ConfigError(f"override '{text}': {parent} is a value, not a section")
            if last:
                node[idx] = value
            else:
                node = node[idx]
        applied[key] = text
    return applied


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> RunConfig:
    """Load, override and validate a run config."""
    data = read_yaml(path)
    applied = apply_overrides(data, list(overrides))
    data.setdefault("name", Path(path).stem)
    return validate_config(data, source=str(path), overrides=applied)


def validate_config(data: dict, source: str = "config", overrides: Optional[dict[str, str]] = None) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, data, source, overrides or {})) from e


def describe_validation_error(error: ValidationError, data: dict, source: str, overrides: dict[str, str],
                               root: type[BaseModel] = RunConfig) -> str:
    errors = error.errors()
    first = errors[0]
    loc = _user_loc(first, data)
    key = ".".join(str(p) for p in loc) or "(top level)"
    where = source
    for dotted, text in overrides.items():
        created = first["type"] == "extra_forbidden" and dotted.startswith(key + ".")  # override made the key
        if key == dotted or key.startswith(dotted + ".") or created:
            where = f"override '{text}'"
    if first["type"] == "extra_forbidden":
        valid = _valid_keys(root, loc[:-1])
        hint = _nearest(str(loc[-1]), valid)
        message = f"unknown key '{key}'"
        if hint:
            message += f" (did you mean '{'.'.join(str(p) for p in (*loc[:-1], hint))}'?)"
        elif valid:
            message += f" (valid keys here: {', '.join(valid)})"
    elif first["type"] == "missing":
        message = f"missing required key '{key}'"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        got = first.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        message = f"{key}: {msg}{shown}"
    more = len(errors) - 1
    suffix = f" [and {more} more problem{'s' if more > 1 else ''}]" if more and not _same_field(errors) else ""
    return f"{where}: {message}{suffix}"


def _same_field(errors: list[dict]) -> bool:
    """Union types report one error per member for a single bad field: count them once."""
    roots = {tuple(p for p in e["loc"] if isinstance(p, int) or "[" not in str(p))[:2] for e in errors}
    return len(roots) == 1


def _user_loc(err: dict, data: Any) -> tuple:
    """The error's location as the user wrote it: drop pydantic's union-member tags."""
    loc = tuple(err["loc"])
    if err["type"] in ("missing", "extra_forbidden"):
        return tuple(p for p in loc if not _is_tag(p))
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            out.append(part)
        elif _is_tag(part):
            continue
        else:
            out.append(part)
            break
    return tuple(out)


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict"))


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    target = _type_at(model, loc)
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        return []
    return [info.alias or name for name, info in target.model_fields.items()]


def _type_at(tp: Any, loc: tuple) -> Any:
    for part in loc:
        tp = _unwrap(tp, want_list=isinstance(part, int))
        if isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[0] if args else None
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None
            tp = field.annotation
        else:
            return None
    return _unwrap(tp, want_list=False)


def _unwrap(tp: Any, want_list: bool) -> Any:
    """Optional[X] / Union[X, Y] -> the member that is a model (or a list, when indexing)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            inner_origin = typing.get_origin(arg)
            if want_list and inner_origin is list:
                return arg
            if not want_list and isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
        return tp
    return tp


def _nearest(key: str, valid: list[str]) -> Optional[str]:
    matches = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not matches:
        lowered = {v.lower(): v for v in valid}
        matches = [lowered[key.lower()]] if key.lower() in lowered else []
    return matches[0] if matches else None


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True, width=100)
