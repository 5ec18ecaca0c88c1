"""Loading a config: YAML (duplicate keys refused) plus dotted command-line overrides, coerced to the dataclass's
types; unknown keys are rejected with the closest known names. Also to_dict, fingerprints (what resume compares)
and `require()`, the check of the paths a stage needs when it starts."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from plad.config.fields import suggest
from plad.utils.errors import ConfigError
from plad.utils.io import write_text_atomic

# --------------------------------------------------------------------------------------------------------------
# Loading, overrides, fingerprints


@functools.cache  # read-only; evaluating the annotations was most of every command's start-up (1,500 calls)
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, key: str, default: Any = None) -> Any:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
        return from_dict(typ, value, prefix=key + ".", base=default)
    if typ is list or origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [str(v) for v in value]
    if origin in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def from_dict(cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    """Build `cls` from a plain dict, rejecting unknown keys (with close matches) and wrong types.

    Fields absent from `data` keep the defaults of `base` (the parent's default value of this section, which may
    differ from the section class's own defaults, e.g. RunConfig.distill.train.lr), or of `cls`.
    """
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"unknown config key {prefix + str(k)!r}{suggest(str(k), types_)}")
    kwargs = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls) if base is not None}
    for k, v in data.items():
        default = None
        if dataclasses.is_dataclass(types_[k]):
            default = getattr(base, k) if base is not None else _field_default(cls, k)
        kwargs[k] = _coerce(v, types_[k], prefix + k, default)
    if isinstance(kwargs.get("threads"), int) and kwargs["threads"] < 0:
        raise ConfigError(f"{prefix}threads must be >= 0 (0: torch's default), got {kwargs['threads']}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix.rstrip('.')}: {e}" if prefix else str(e)) from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def result_settings(cfg: Any) -> dict:
    """`to_dict(cfg)` without the fields marked in_fingerprint=False (at any depth): what fingerprints hash."""
    out = {}
    for f in dataclasses.fields(cfg):
        counted = f.metadata.get("in_fingerprint", True)
        if not counted:
            continue
        value = getattr(cfg, f.name)
        if counted == "unless-default" and value == _default(f):
            continue
        if callable(counted):
            value = counted(value, cfg)
            if value is None:
                continue
        out[f.name] = result_settings(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def set_dotted(data: dict, cls: type, dotted: str, raw: str) -> None:
    """Apply one `--a.b.c VALUE` override to a nested dict, validating the key path against `cls`."""
    parts = dotted.split(".")
    node, typ = data, cls
    for i, part in enumerate(parts):
        types_ = _field_types(typ)
        if part not in types_:
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}{suggest(part, types_)}")
        if i == len(parts) - 1:
            node[part] = raw
        else:
            typ = types_[part]
            if not dataclasses.is_dataclass(typ):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section")
            node = node.setdefault(part, {})


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping: YAML keeps the last one silently, so a second
    `train:` section would drop every setting of the first."""


def _unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            line = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if line is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice (first on line {line + 1}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column), what, and in what (PyYAML's own text spans several lines
    and quotes the text)."""
    if isinstance(e, yaml.reader.ReaderError):  # PyYAML's own text says "<byte string>" instead of the file
        if e.encoding != "unicode":
            return f"byte {e.position} is not {e.encoding.upper()} text ({e.reason}); save the file as UTF-8"
        return f"character {e.position} (#x{e.character:04x}) is a control character, not allowed in YAML"
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    text = (f"line {mark.line + 1}, column {mark.column + 1}: " if mark else "") + problem
    if context:
        text += f" ({context}{f' from line {context_mark.line + 1}' if context_mark else ''})"
    return " ".join(text.split())


def load_config(cls: type, path: str | Path | None = None, overrides: list[tuple[str, str]] = ()) -> Any:
    """YAML file (optional) + dotted overrides -> validated dataclass."""
    data: dict = {}
    if path:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a folder; give the YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.load(p.read_bytes(), Loader=_ConfigLoader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of settings at the top level")
    for key, raw in overrides:
        set_dotted(data, cls, key, raw)
    where = f" (in {path})" if path else ""
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(dotted name, type, default, help) for every leaf field, for the generated CLI."""
    out = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        typ = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(typ):
            sub = flat_fields(typ, prefix + f.name + ".")
            # Nested defaults may differ from the section class's own defaults.
            value = getattr(defaults, f.name)
            out += [(n, t, _get(value, n[len(prefix + f.name) + 1 :]), h) for n, t, _, h in sub]
        else:
            help_ = f.metadata.get("help", "")
            if f.metadata.get("choices"):
                help_ += f" [{'|'.join(f.metadata['choices'])}]"
            out.append((prefix + f.name, typ, getattr(defaults, f.name), help_))
    return out


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def fingerprint(obj: Any) -> str:
    """Stable short hash of a config (or any JSON-able value)."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def require(cfg: Any, *names: str) -> None:
    """Stage-start check that the paths a stage needs are set."""
    missing = [n for n in names if not _get(cfg, n)]
    if missing:
        flags = ", ".join(f"--{n}" for n in missing)
        raise ConfigError(
            f"{type(cfg).__name__}: missing {', '.join(missing)}; set it in the YAML or with {flags}"
        )


def save_yaml(cfg: Any, path: Path) -> None:

    # temp-then-rename: a kill never leaves half a config
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
