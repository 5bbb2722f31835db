"""Dataset spec strings: ``KIND[:ARG][?NAME=VALUE&...]``.

The options after ``?`` are part of the spec, so the spec string a run stores in run.json
(``folder:pets?size=32x32``) reproduces the same arrays in every later command. Only the
image-folder kinds take options (``size`` for ``folder``/``csv``/``hf``; ``image`` and
``label`` columns for ``hf``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from audit.errors import AuditError

KINDS = ("digits", "cifar10", "fmow", "npz", "folder", "csv", "hf")
SPEC_HELP = "digits, cifar10[:DIR], fmow[:DIR], npz:FILE, folder:DIR, csv:FILE or hf:DIR"
# options each kind accepts after '?'
OPTIONS = {"folder": ("size",), "csv": ("size",), "hf": ("size", "image", "label")}
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
MAX_SIDE = 8192


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ``kind``, ``arg`` (the path, or '' when none) and its ``options``."""

    text: str
    kind: str
    arg: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int] | None:
        """``(H, W)`` from ``size=HxW``, or None (then images must all have one size)."""
        raw = self.options.get("size")
        return None if raw is None else parse_size(raw, self.text)

    def with_option(self, name: str, value: str) -> str:
        """This spec's text with one option set (used to tell people what to pass)."""
        options = {**self.options, name: value}
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"{self.kind}:{self.arg}?{query}"


def kind_of(spec: str) -> str:
    """The loader name of a spec; AuditError for an unknown one."""
    kind = spec.partition(":")[0].partition("?")[0].strip().lower()
    if kind not in KINDS:
        raise AuditError(f"unknown dataset '{spec}': use {SPEC_HELP}")
    return kind


def parse_spec(spec: str) -> Spec:
    """Split ``KIND:ARG?a=1&b=2``; refuse options a kind does not take (naming the ones it does)."""
    kind = kind_of(spec)
    rest = spec.partition(":")[2]
    arg, query = rest, ""
    if kind in OPTIONS and "?" in rest:
        arg, _, query = rest.rpartition("?")
    options: dict[str, str] = {}
    for part in (p for p in query.split("&") if p.strip()):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name or not value:
            raise AuditError(f"{spec}: option '{part}' must look like NAME=VALUE "
                             f"(e.g. {kind}:{arg or 'PATH'}?size=32x32)")
        if name not in OPTIONS[kind]:
            raise AuditError(f"{spec}: unknown option '{name}' for {kind}; it takes {', '.join(OPTIONS[kind])}")
        if name in options:
            raise AuditError(f"{spec}: option '{name}' is given twice")
        options[name] = value
    parsed = Spec(text=spec, kind=kind, arg=arg.strip(), options=options)
    if "size" in options:
        parse_size(options["size"], spec)
    return parsed


def parse_size(raw: str, spec: str) -> tuple[int, int]:
    """``"32x48"`` -> ``(32, 48)`` (height, width)."""
    m = _SIZE.match(raw)
    if not m or not all(1 <= int(g) <= MAX_SIDE for g in m.groups()):
        raise AuditError(f"{spec}: size={raw} is not HxW (height x width in pixels, 1..{MAX_SIDE}), e.g. size=32x32")
    return int(m.group(1)), int(m.group(2))


def dataset_name(spec: str) -> str:
    """Short name for default run and cache folders: the kind, or the file/folder name for
    ``npz``/``csv``/``folder``/``hf`` (with ``-HxW`` when the spec resizes)."""
    s = parse_spec(spec)
    if s.kind in ("npz", "csv", "folder", "hf") and s.arg:
        path = Path(s.arg.rstrip("/\\") or s.arg).expanduser()
        name = path.stem if s.kind in ("npz", "csv") else (path.name or path.resolve().name)
        name = name or s.kind
        if s.size is not None:
            name += "-{}x{}".format(*s.size)
        return name
    return s.kind
