"""Exports for labelling tools (audit/export.py): Label Studio tasks and a FiftyOne dataset."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit import export as ex
from audit import findings
from audit.contract import Finding
from audit.data.dataset import Dataset
from tests.cli_inprocess import call_main
from tests.conftest import assert_one_line_error, run_cli
from tests.test_findings import found_run  # noqa: F401  (the shared fixture: a run with every audit's result)

RUNNERS = {"subprocess": run_cli, "in-process": call_main}
EVIL = ['<b>&"x"\'', '=HYPERLINK("http://evil","x")', "../../etc/passwd", "$image", "a\nb", "ok"]


def evil_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(spec="npz:evil.npz", x_train=rng.integers(0, 255, (6, 8, 8, 1), dtype=np.uint8),
                   y_train=np.arange(6, dtype=np.int64), x_test=rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8),
                   y_test=np.array([0, 1, 2], dtype=np.int64), classes=tuple(EVIL),
                   meta={"path_train": np.array(["../../../../etc/shadow"] * 6)}, captions=("path",))


def evil_findings() -> list[Finding]:
    base = dict(rule="r", score=1.0, score_meaning="m", step="s", headline="<script>x</script>", action="=cmd()")
    return [Finding(index=1, split="train", issue=findings.LABEL_ERROR_ISSUE, severity="high", evidence='"e"',
                    given_label=1, given_name=EVIL[1], predicted_label=3, predicted_name=EVIL[3], related=[2], **base),
            Finding(index=1, split="train", issue=findings.INFLUENCE_ISSUE, severity="low", evidence="e2", **base),
            Finding(index=2, split="test", issue=findings.BRITTLE_ISSUE, severity="medium", evidence="e3", **base)]


def test_examples_group_findings_per_image_in_rank_order():
    items = evil_findings()
    got = ex.examples_of(items)
    assert [(e.split, e.index, e.rank) for e in got] == [("train", 1, 1), ("test", 2, 3)]
    assert got[0].suggested == 3 and got[1].suggested is None
    assert got[0].tags == [findings.LABEL_ERROR_ISSUE, findings.INFLUENCE_ISSUE, "severity:high"]
    assert [e.index for e in ex.examples_of(items, {findings.BRITTLE_ISSUE})] == [2]
    assert len(ex.examples_of(items, top=1)) == 1


def test_evil_class_names_and_paths_stay_data(tmp_path):
    ds, examples = evil_dataset(), ex.examples_of(evil_findings())
    ls, fo = tmp_path / "ls", tmp_path / "fo"
    ls.mkdir(), fo.mkdir()
    ex.write_labelstudio(ls, examples, ds, "/data/local-files/?d=ls/")
    ex.write_fiftyone(fo, examples, ds)
    choices = [c.get("value") for c in ET.parse(ls / "label_config.xml").getroot().iter("Choice")]
    assert choices == EVIL  # every name exactly, however it is spelled
    tasks = json.loads((ls / "tasks.json").read_text())
    assert tasks[0]["data"]["given_label"] == EVIL[1] and tasks[0]["data"]["source"] == "path: ../../../../etc/shadow"
    assert [p["result"][0]["value"]["choices"] for p in tasks[0]["predictions"]] == [[EVIL[1]], [EVIL[3]]]
    labels = json.loads((fo / "labels.json").read_text())
    assert labels == {"classes": EVIL, "labels": {"train-000001": 1, "test-000002": 2}}
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["fo/README.txt", "fo/audit_samples.json", "fo/data/test-000002.png", "fo/data/train-000001.png",
                       "fo/labels.json", "ls/README.txt", "ls/images/test-000002.png", "ls/images/train-000001.png",
                       "ls/label_config.xml", "ls/tasks.json"]


def _image_file(folder: Path, url: str, prefix: str) -> Path:
    assert url.startswith(prefix)
    return folder / url[len(prefix):]


def test_labelstudio_export_of_a_run(found_run, digits, tmp_path):  # noqa: F811
    out = tmp_path / "ls"
    folder, n = ex.export(found_run, "labelstudio", out)
    found = findings.collect(found_run)
    want = ex.examples_of(found.items)
    assert folder == out and n == len(want) > 0
    tasks = json.loads((out / "tasks.json").read_text())
    prefix = "/data/local-files/?d=ls/"
    ids = set()
    for task, e in zip(tasks, want):
        d = task["data"]
        assert (d["split"], d["index"], d["rank"], d["issue"]) == (e.split, e.index, e.rank, e.top.issue)
        with Image.open(_image_file(out, d["image"], prefix)) as im:
            assert im.size[1] >= 64  # an 8x8 digit enlarged for people
        y = digits.y_train if e.split == "train" else digits.y_test
        assert d["given_label"] == digits.classes[y[e.index]]
        given, *suggested = task["predictions"]
        assert given["result"][0]["value"]["choices"] == [d["given_label"]]
        if suggested:
            assert suggested[0]["result"][0]["value"]["choices"] == [d["suggested_label"]] != [d["given_label"]]
            assert e.suggested is not None
        for p in task["predictions"]:
            r = p["result"][0]
            assert (r["from_name"], r["to_name"], r["type"]) == ("label", "image", "choices") and r["id"] not in ids
            ids.add(r["id"])
    root = ET.parse(out / "label_config.xml").getroot()
    assert [c.get("value") for c in root.iter("Choice")] == list(digits.classes)
    assert {el.get("name") for el in root.iter() if el.get("name")} == {"image", "evidence", "label"}
    assert json.loads((out / ex.MARKER).read_text())["n_images"] == n


def test_fiftyone_export_of_a_run(found_run, digits, tmp_path):  # noqa: F811
    out = tmp_path / "fo"
    _, n = ex.export(found_run, "fiftyone", out, issues={findings.LABEL_ERROR_ISSUE}, top=5)
    labels = json.loads((out / "labels.json").read_text())
    samples = json.loads((out / "audit_samples.json").read_text())["samples"]
    stems = sorted(p.stem for p in (out / "data").glob("*.png"))
    assert labels["classes"] == list(digits.classes) and sorted(labels["labels"]) == stems == sorted(samples)
    assert 0 < n <= 5
    for uid, info in samples.items():
        split, index = uid.split("-")
        assert split == "train" and labels["labels"][uid] == digits.y_train[int(index)]
        f = info["fields"]
        assert f["audit_issue"] == findings.LABEL_ERROR_ISSUE and f["audit_index"] == int(index)
        assert {"audit_score", "audit_severity", "audit_predicted", "audit_given", "audit_evidence"} <= set(f)
        assert findings.LABEL_ERROR_ISSUE in info["tags"] and f"severity:{f['audit_severity']}" in info["tags"]


def test_an_export_replaces_an_earlier_one_and_a_failed_one_leaves_nothing(found_run, tmp_path,  # noqa: F811
                                                                           monkeypatch):
    out = tmp_path / "ls"
    ex.export(found_run, "labelstudio", out, top=2)
    (out / "stale.txt").write_text("from an earlier export")
    ex.export(found_run, "labelstudio", out, top=1)
    assert not (out / "stale.txt").exists() and len(json.loads((out / "tasks.json").read_text())) == 1

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex, "write_images", broken)
    with pytest.raises(OSError):
        ex.export(found_run, "fiftyone", tmp_path / "fo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ls"]  # no export, no temporary folder


@pytest.mark.parametrize("runner", RUNNERS)
def test_bad_exports_are_one_line_errors(found_run, tmp_path, runner):  # noqa: F811
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args in (["--to", "xml"], ["--to", "fiftyone", "--out", str(other)],
                 ["--to", "labelstudio", "--out", str(a_file)],
                 ["--to", "labelstudio", "--out", str(tmp_path / "new"), "--image-url-prefix", "javascript:alert(1)"],
                 ["--to", "labelstudio", "--issue", "typo", "--out", str(tmp_path / "new")]):
        assert_one_line_error(RUNNERS[runner]("export", found_run, *args))
    assert (other / "notes.txt").read_text() == "keep me" and a_file.read_text() == "x"
    assert not (tmp_path / "new").exists()


def test_audit_export_command(found_run, tmp_path):  # noqa: F811
    proc = run_cli("export", found_run, "--to", "labelstudio", "--out", tmp_path / "ls", "--top", "3",
                   "--image-url-prefix", "https://bucket.example.org/audit")
    assert proc.returncode == 0, proc.stderr
    assert "exported 3 flagged images" in proc.stdout
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert all(t["data"]["image"].startswith("https://bucket.example.org/audit/images/") for t in tasks)
