"""Dataset spec strings: options after '?' are part of the spec; names for runs and caches."""

from __future__ import annotations

import pytest

from audit.data import dataset_kind
from audit.data.spec import dataset_name, parse_spec
from audit.errors import AuditError
from audit.pipeline import default_run_dir


def test_options_parse_and_size_is_height_by_width():
    s = parse_spec("hf:/data/beans?image=img&label=kind&size=32x48")
    assert (s.kind, s.arg, s.options) == ("hf", "/data/beans", {"image": "img", "label": "kind", "size": "32x48"})
    assert s.size == (32, 48)
    assert parse_spec("folder:/d/pets").size is None
    assert parse_spec("folder:/d/pets").with_option("size", "8x8") == "folder:/d/pets?size=8x8"


def test_npz_paths_keep_question_marks():
    assert parse_spec("npz:/d/odd?name.npz").arg == "/d/odd?name.npz"


@pytest.mark.parametrize("spec, match", [("folder:/d?size=32", "not HxW"), ("folder:/d?size=0x5", "not HxW"),
                                         ("folder:/d?colour=rgb", "unknown option 'colour'.*takes size"),
                                         ("csv:/d.csv?image=x", "unknown option 'image'"),
                                         ("hf:/d?label", "NAME=VALUE"), ("hf:/d?size=4x4&size=5x5", "twice"),
                                         ("pictures:/d", "unknown dataset.*folder:DIR, csv:FILE or hf:DIR")])
def test_bad_specs(spec, match):
    with pytest.raises(AuditError, match=match):
        parse_spec(spec)


@pytest.mark.parametrize("spec, name", [("digits", "digits"), ("cifar10:/x/y", "cifar10"), ("npz:/d/feat.npz", "feat"),
                                        ("folder:/d/pets/", "pets"), ("folder:/d/pets?size=32x32", "pets-32x32"),
                                        ("csv:/d/manifest.csv", "manifest"), ("hf:~/beans?label=y", "beans")])
def test_names_for_run_and_cache_folders(spec, name):
    assert dataset_name(spec) == name
    assert default_run_dir(spec) == default_run_dir("digits").parent / name


def test_kinds():
    assert [dataset_kind(s) for s in ("folder:a", "csv:b.csv", "hf:c?size=2x2")] == ["folder", "csv", "hf"]
