"""Field helpers shared by every config dataclass: `opt` (default + help + choices), dtype fields, and the
checks of method names, values and layer lists."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from collections.abc import Callable
from dataclasses import field
from typing import Any

from plad.config.method_specs import ALL_METHODS
from plad.utils.errors import ConfigError


def opt(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    in_fingerprint: bool | str | Callable[[Any, Any], Any] = True,
) -> Any:
    """A dataclass field with a help text (and allowed values); mutable defaults go through a factory.
    in_fingerprint=False: a setting that cannot change a result (a time limit) and came after stage fingerprints
    existed, left out of them (`result_settings`) so that stages finished before it was added stay valid.
    in_fingerprint="unless-default": a setting added after stage fingerprints existed that can change a result:
    counted only when it differs from its default, so stages finished before it was added stay valid.
    in_fingerprint=function: the value is counted as function(value, the config holding it), left out where that
    is None (a setting whose effect depends on another one)."""
    meta = {"help": help, "choices": choices, "in_fingerprint": in_fingerprint}
    if dataclasses.is_dataclass(default) or isinstance(default, list | dict):
        proto = default
        return field(default_factory=lambda: _copy(proto), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    return copy.deepcopy(value)


DTYPES = ("float32", "bfloat16", "float16", "auto")


def dtype_opt(what: str) -> Any:
    """A weights-dtype setting (float32 by default: bfloat16 is no faster than float32 on a CPU without
    AVX512-BF16, and often far slower)."""
    return opt("float32", f"{what}: float32, bfloat16, float16 or auto (as stored in the checkpoint)", DTYPES)


def check_choices(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{f.name} = {value!r} is not allowed; choose one of {', '.join(choices)}")


def check_methods(methods: list[str]) -> None:
    for m in methods:
        if m not in ALL_METHODS:
            raise ConfigError(f"methods: unknown method {m!r}{suggest(m, ALL_METHODS)}")


def check_values(name: str, values: list[str], conv: type, ok: Any, what: str) -> None:
    """Every value of a list setting converts with `conv` and passes `ok`; the error says what is expected."""
    for v in values:
        try:
            good = ok(conv(v))
        except ValueError:
            good = False
        if not good:
            raise ConfigError(f"{name}: {v!r} is not a valid value (expected {what})")


def check_layers(keep_layers: list[str]) -> None:
    """What can be wrong with the layers to keep without knowing the model (its layer count is checked with it)."""
    try:
        keep = [int(v) for v in keep_layers]
    except ValueError:
        raise ConfigError(f"keep_layers must be layer numbers, got {','.join(keep_layers)}") from None
    if bad := [k for k in keep if k < 0]:
        raise ConfigError(f"keep_layers: layer {bad[0]} is out of range; layers are numbered from 0")
    if keep != sorted(set(keep)):
        raise ConfigError(f"keep_layers must increase without repeats (got {','.join(keep_layers)})")


def suggest(name: str, known: typing.Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    close += [k for k in known if k in name.split("_") and k not in close]  # lr_rate -> lr
    return f" (did you mean {', '.join(close)}?)" if close else f"; known: {', '.join(sorted(known))}"
