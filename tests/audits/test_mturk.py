"""MTurk export -> simulated results -> import (audit/audits/mturk.py)."""

from __future__ import annotations

import csv
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit.audits import mturk
from audit.errors import AuditError

TEST_IDS = [3, 7, 9]
K = 10


@pytest.fixture()
def images():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
            rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))


@pytest.fixture()
def cands():
    return np.array([list(range(0, 10)), list(range(5, 15)), list(range(30, 40))])


@pytest.fixture()
def export(tmp_path, images, cands):
    x_test, x_train = images
    return mturk.export_batch(tmp_path / "mturk", TEST_IDS, cands, x_test, x_train, "https://example.org/imgs/")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.starts: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.starts.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def of(self, tag):
        return [a for t, a in self.starts if t == tag]


def parse_html(text: str) -> Tags:
    p = Tags()
    p.feed(text)
    p.close()
    return p


def substitute(template: str, row: dict) -> str:
    """What MTurk does: replace ${name} by the CSV value, verbatim."""
    return re.sub(r"\$\{(\w+)\}", lambda m: row[m.group(1)], template)


# ----------------------------------------------------------------------------- export

def test_export_files(export, images, cands):
    x_test, x_train = images
    names = sorted(p.name for p in export.dir.iterdir())
    assert names == ["README.txt", "batch_input.csv", "hit_template.html", "images", "manifest.json"]
    expected_imgs = {f"test_{t}.png" for t in TEST_IDS} | {f"train_{j}.png" for j in set(cands.ravel().tolist())}
    assert {p.name for p in (export.dir / "images").iterdir()} == expected_imgs
    assert len(export.images) == len(expected_imgs)
    big = np.asarray(Image.open(export.dir / "images" / "train_12.png"))
    assert big.shape == (32, 32, 3)
    assert np.array_equal(big, x_train[12].repeat(4, axis=0).repeat(4, axis=1))

    rows = read_csv(export.batch_input)
    template = export.template.read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", template))
    assert placeholders == set(rows[0].keys())
    assert list(rows[0].keys())[:4] == ["test_id", "test_image_url", "cand0_id", "cand0_url"]
    assert [r["test_id"] for r in rows] == ["3", "7", "9"]
    assert rows[1]["cand9_id"] == "14" and rows[1]["cand9_url"] == "https://example.org/imgs/train_14.png"
    assert rows[0]["test_image_url"] == "https://example.org/imgs/test_3.png"

    page = parse_html(template)
    assert [a["src"] for a in page.of("script")] == ["https://assets.crowd.aws/crowd-html-elements.js"]
    assert len(page.of("crowd-form")) == 1
    assert [a["name"] for a in page.of("crowd-checkbox")] == [f"c{i}" for i in range(K)]
    assert "https://example.org/imgs/<file name>" in export.readme.read_text()
    assert mturk.read_manifest(export.dir) == (TEST_IDS, {t: c.tolist() for t, c in zip(TEST_IDS, cands)})


def test_hostile_strings_cannot_break_html_or_csv(tmp_path, images, cands):
    x_test, x_train = images
    evil = '<script>alert("x")</script>, "quoted", comma'
    classes = [f"class{i}" for i in range(5)] + [evil, 'a,b', '"q"', "</div><img src=x onerror=alert(1)>", "ok"]
    y_test = np.arange(12) % 10
    y_train = np.arange(40) % 10
    base = 'https://cdn.example.org/a,b/"x"<script>'
    exp = mturk.export_batch(tmp_path / "m", TEST_IDS, cands, x_test, x_train, base, title=evil,
                             instructions=evil, classes=classes, y_test=y_test, y_train=y_train)
    rows = read_csv(exp.batch_input)
    assert len(rows) == 3 and all(None not in r for r in rows)
    header = list(rows[0].keys())
    assert header[:3] == ["test_id", "test_image_url", "test_label"] and len(header) == 3 + 3 * K
    template = exp.template.read_text()
    page = parse_html(template)
    assert len(page.of("script")) == 1
    assert evil in "".join(page.text)                           # shown as text, not markup
    for row in rows:
        filled = parse_html(substitute(template, row))
        assert [a["src"] for a in filled.of("script")] == [mturk.CROWD_JS]
        srcs = [a["src"] for a in filled.of("img")]
        assert srcs[0] == f"{base}/test_{row['test_id']}.png"
        assert srcs[1:] == [f"{base}/train_{row[f'cand{i}_id']}.png" for i in range(K)]
        assert len(filled.of("crowd-checkbox")) == K
        label = html.unescape(row["test_label"])
        assert label == classes[y_test[int(row["test_id"])]]
    labels = {html.unescape(r[f"cand{i}_label"]) for r in rows for i in range(K)}
    assert evil in labels and "a,b" in labels and '"q"' in labels


# ----------------------------------------------------------------------------- import

HEADER_BASE = ["HITId", "HITTypeId", "Title", "Reward", "AssignmentId", "WorkerId", "AssignmentStatus",
               "AcceptTime", "SubmitTime", "WorkTimeInSeconds"]


def results_csv(path: Path, export_rows: list[dict], assignments: list[tuple], fmt: str) -> Path:
    """Write an MTurk-style results CSV. assignments: (test_id, worker, status, ticked positions)."""
    by_test = {r["test_id"]: r for r in export_rows}
    in_cols = [f"Input.{c}" for c in export_rows[0]]
    ans_cols = ["Answer.taskAnswers"] if fmt.startswith("json") else \
        [f"Answer.c{i}.on" for i in range(K)] + ["Answer.test_id"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER_BASE + in_cols + ans_cols + ["Approve", "Reject"])
        for n, (test, worker, status, ticked) in enumerate(assignments):
            base = [f"HIT{test}", "TYPE1", "Near duplicates?", "$0.05", f"ASG{n}", worker, status,
                    "Mon Jan 01 00:00:00 PST 2024", "Mon Jan 01 00:01:00 PST 2024", "60"]
            inputs = [by_test[str(test)][c[len("Input."):]] for c in in_cols]
            if fmt == "json":
                hidden = {"test_id": str(test)} | {f"cand{i}_id": inputs[in_cols.index(f"Input.cand{i}_id")]
                                                   for i in range(K)}
                answers = [json.dumps([hidden | {f"c{i}": {"on": i in ticked} for i in range(K)}])]
            elif fmt == "json-plain":
                answers = [json.dumps([{"leak": {f"c{i}": i in ticked for i in range(K)}}])]
            else:
                answers = ["true" if i in ticked else "false" for i in range(K)] + [str(test)]
            w.writerow(base + inputs + answers + ["", ""])
    return path


ASSIGNMENTS = [
    (3, "W1", "Rejected", {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}),   # ignored
    (3, "W1", "Approved", {0, 2}),                          # same worker, but the other one was rejected
    (3, "W2", "Submitted", {0}),
    (3, "W3", "Approved", {0, 9}),
    (7, "W1", "Approved", set()),
    (7, "W2", "Approved", {4}),
]


def expected_scores(cands):
    return {(3, 0): (3, 3), (3, 2): (1, 3), (3, 9): (1, 3), (7, 5 + 4): (1, 2)}


@pytest.mark.parametrize("fmt", ["json", "json-plain", "flat"])
def test_round_trip_scores_exact(tmp_path, export, cands, fmt):
    rows = read_csv(export.batch_input)
    path = results_csv(tmp_path / "results.csv", rows, ASSIGNMENTS, fmt)
    ids, cand_map = mturk.read_manifest(export.dir)
    res = mturk.import_results(path, ids, cand_map)
    marked = {(p["test_id"], p["train_id"]): (p["n_marked"], p["n_workers"]) for p in res.pairs if p["n_marked"]}
    assert marked == expected_scores(cands)
    assert len(res.pairs) == 2 * K
    assert res.leakage_score == {3: 1.0, 7: 0.5}
    assert res.n_workers == {3: 3, 7: 2}
    pair = next(p for p in res.pairs if p["test_id"] == 3 and p["train_id"] == 2)
    assert pair["score"] == pytest.approx(1 / 3) and pair["position"] == 2
    s = res.summary
    assert s["n_rejected"] == 1 and s["n_assignments_used"] == 5 and s["n_workers"] == 3
    assert s["unanswered_test_ids"] == [9] and s["n_tests_answered"] == 2
    assert sum(s["leakage_score"]["hist"]["counts"]) == 2 and s["leakage_score"]["n_equal_1"] == 1
    out = res.to_json()
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert out["tests"] == [{"test_id": 3, "n_workers": 3, "leakage_score": 1.0},
                            {"test_id": 7, "n_workers": 2, "leakage_score": 0.5}]


def _rewrite(path: Path, edit) -> Path:
    with open(path, newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    edit(table)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(table)
    return path


def _set(table, row, col, value):
    table[row][table[0].index(col)] = value


def _drop_col(table, col):
    i = table[0].index(col)
    for r in table:
        del r[i]


MALFORMED = {
    "missing column": (lambda t: _drop_col(t, "Input.cand4_id"), r"row 1: missing column\(s\) Input.cand4_id"),
    "missing answers": (lambda t: _drop_col(t, "Answer.taskAnswers"), "row 1: missing column.*Answer"),
    "unknown test id": (lambda t: _set(t, 3, "Input.test_id", "12345"), "row 4: Input.test_id '12345'"),
    "candidate mismatch": (lambda t: _set(t, 5, "Input.cand3_id", "39"), "row 6: Input.cand3_id is '39'"),
    "same worker twice": (lambda t: _set(t, 4, "WorkerId", "W2"), r"row 5: worker W2 answered test image 3 twice \(also row 4\)"),
    "bad json": (lambda t: _set(t, 2, "Answer.taskAnswers", "[{not json"), "row 3: cannot read the answer: Answer.taskAnswers is not JSON"),
    "bad value": (lambda t: _set(t, 6, "Answer.taskAnswers", json.dumps([{"c0": "maybe"}])),
                  "row 7: cannot read the answer: answer c0"),
    "no checkboxes": (lambda t: _set(t, 6, "Answer.taskAnswers", json.dumps([{"comment": "hi"}])),
                      "row 7: cannot read the answer: no checkbox"),
    "empty answer": (lambda t: _set(t, 6, "Answer.taskAnswers", ""), "row 7: cannot read the answer: the row has no answer"),
    "bad status": (lambda t: _set(t, 3, "AssignmentStatus", "Pending"), "row 4: AssignmentStatus 'Pending'"),
    "empty worker": (lambda t: _set(t, 3, "WorkerId", ""), "row 4: WorkerId is empty"),
    "all rejected": (lambda t: [_set(t, r, "AssignmentStatus", "Rejected") for r in range(1, len(t))],
                     "no usable assignments"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_results(tmp_path, export, case):
    edit, needle = MALFORMED[case]
    rows = read_csv(export.batch_input)
    path = _rewrite(results_csv(tmp_path / "r.csv", rows, ASSIGNMENTS, "json"), edit)
    ids, cand_map = mturk.read_manifest(export.dir)
    with pytest.raises(AuditError, match=needle) as err:
        mturk.import_results(path, ids, cand_map)
    assert "\n" not in str(err.value) and "r.csv" in str(err.value)


@pytest.mark.parametrize("answer,expected", [
    ({"c0": True, "c1": False, "c2": True}, [True, False, True]),
    ({"c0": {"on": True}, "c1": {"on": False}, "c2": {"on": False}}, [True, False, False]),
    ({"leak": {"c0": False, "c1": True, "c2": False}, "test_id": "3"}, [False, True, False]),
    ({"c0": "true", "c1": "false", "c2": "on"}, [True, False, True]),
    ({"c1": {"on": True}}, [False, True, False]),          # absent boxes count as not ticked
])
def test_answer_shapes(answer, expected):
    assert mturk._marks(answer, 3) == expected


def test_flat_answer_unreadable_names_row(tmp_path, export):
    rows = read_csv(export.batch_input)
    path = _rewrite(results_csv(tmp_path / "r.csv", rows, ASSIGNMENTS, "flat"),
                    lambda t: _set(t, 5, "Answer.c3.on", "perhaps"))
    with pytest.raises(AuditError, match="row 6: cannot read the answer: answer c3"):
        mturk.import_results(path, *mturk.read_manifest(export.dir))


# ----------------------------------------------------------------------------- atomicity

def test_failed_export_leaves_nothing(tmp_path, images, cands):
    x_test, x_train = images
    bad_train = x_train.astype(np.float32)           # fails while writing the training images
    with pytest.raises(AuditError, match="training image 0 has dtype float32"):
        mturk.export_batch(tmp_path / "m", TEST_IDS, cands, x_test, bad_train, "https://x")
    assert list(tmp_path.iterdir()) == []


def test_reexport_replaces_old_folder(tmp_path, images, cands):
    x_test, x_train = images
    first = mturk.export_batch(tmp_path / "m", TEST_IDS, cands, x_test, x_train, "https://x")
    (first.dir / "stale.txt").write_text("old")
    second = mturk.export_batch(tmp_path / "m", [3], cands[:1], x_test, x_train, "https://y", upscale=2)
    assert not (second.dir / "stale.txt").exists()
    assert [r["test_id"] for r in read_csv(second.batch_input)] == ["3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("kw,needle", [
    ({"test_ids": [3, 99]}, r"test_ids\[1\] = 99"),
    ({"cand_idx": np.full((3, 10), 40)}, r"cand_idx\[0, 0\] = 40"),
    ({"cand_idx": np.zeros((2, 10), int)}, "expected \\[3 test images"),
    ({"image_base_url": "  "}, "image_base_url is empty"),
    ({"test_ids": [3, 3, 9]}, "test id 3 appears twice"),
])
def test_export_bad_input(tmp_path, images, cands, kw, needle):
    x_test, x_train = images
    args = {"test_ids": TEST_IDS, "cand_idx": cands, "image_base_url": "https://x"} | kw
    with pytest.raises(AuditError, match=needle):
        mturk.export_batch(tmp_path / "m", args["test_ids"], args["cand_idx"], x_test, x_train,
                           args["image_base_url"])
    assert list(tmp_path.iterdir()) == []
