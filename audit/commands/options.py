"""Command-line options derived from the steps' settings dataclasses (audit.contract.setting).

A step's settings are declared once, with their defaults, flags and help; every command that
runs the step — its own and `audit run` — gets its options from there (:func:`with_settings`),
so a setting has one name and one default everywhere.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Optional, Sequence

import typer

from audit.commands.common import parse_names, parse_number_list
from audit.contract import settings_of
from audit.errors import AuditError


def _plain_type(tp: Any) -> Any:
    """``int | None`` -> ``Optional[int]`` (what typer understands); tuples are handled by ``parse``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return Optional[args[0]]
    return tp


def _fields(config_types: Sequence[type], include_command_only: bool) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) for every setting of ``config_types``, each name once."""
    seen: dict[str, dataclasses.Field] = {}
    out = []
    for ct in config_types:
        hints = typing.get_type_hints(ct)
        for f in settings_of(ct):
            if f.metadata["command_only"] and not include_command_only:
                continue
            if f.name in seen:
                other = seen[f.name]
                if (other.metadata["flag"], other.default) != (f.metadata["flag"], f.default):
                    raise TypeError(f"setting {f.name} has two flags or defaults: {other.metadata['flag']}="
                                    f"{other.default!r} vs {f.metadata['flag']}={f.default!r}")
                continue
            seen[f.name] = f
            out.append((f, hints[f.name]))
    return out


def parameters(config_types: Sequence[type], include_command_only: bool = True) -> list[inspect.Parameter]:
    """typer options (as keyword parameters) for the settings of ``config_types``."""
    params = []
    for f, tp in _fields(config_types, include_command_only):
        m = f.metadata
        decls = (m["flag"], *m["aliases"])
        if m["parse"] == "options":
            annotation, default = Optional[list[str]], None
        elif m["parse"] in ("ints", "floats", "names"):
            annotation = Optional[str]
            default = None if f.default is None else ",".join(str(v) for v in f.default)
        else:
            annotation, default = _plain_type(tp), f.default
        bounds = {"min": m["minimum"]} if m.get("minimum") is not None and m["parse"] is None else {}
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=typer.Option(default, *decls, help=m["help"], **bounds)))
    return params


def build(config_type: type, values: dict[str, Any]) -> Any:
    """The settings dataclass from command-line values (names as the fields; missing ones keep defaults)."""
    kwargs = {}
    for f in settings_of(config_type):
        if f.name not in values:
            continue
        value, parse = values[f.name], f.metadata["parse"]
        what = f.metadata["flag"]
        if parse == "options":
            value = tuple(value or ())
        elif parse == "names" and value is not None:
            value = tuple(parse_names(value))
            if not value:
                raise AuditError(f"{what} is empty; give a comma-separated list")
        elif parse in ("ints", "floats") and value is not None:
            value = tuple(parse_number_list(value, what, int if parse == "ints" else float))
        kwargs[f.name] = value
    return config_type(**kwargs)


def with_settings(*config_types: type, include_command_only: bool = True) -> Callable[[Callable], Callable]:
    """Decorate ``f(..., settings: dict)``: typer sees f's own parameters plus one option per setting
    of ``config_types``; f receives the settings' values as ``settings``."""

    def wrap(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func).parameters.values() if p.name != "settings"]
        hints = typing.get_type_hints(func)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own]
        derived = parameters(config_types, include_command_only)
        clash = {p.name for p in own} & {p.name for p in derived}
        if clash:
            raise TypeError(f"{func.__name__}: parameters {clash} are also settings")

        def command(**kwargs: Any) -> Any:
            fixed = {p.name: kwargs.pop(p.name) for p in own}
            return func(**fixed, settings=kwargs)

        command.__signature__ = inspect.Signature(own + derived)  # type: ignore[attr-defined]
        command.__name__, command.__doc__ = func.__name__, func.__doc__
        return command

    return wrap
