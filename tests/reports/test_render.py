"""The report page read as a person's browser would: parsed HTML, every section, every image decoding."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

from audit.audits.support import ranking_verdict
from audit.reports import render
from audit.reports.render import REPORT_FILE, SECTIONS, render_report
from tests.reports.conftest import copy_run

ALL_IDS = {s.id for s in SECTIONS}


class Page(HTMLParser):
    """Elements with their attributes, the text of each section, and the raw text of <script>/<style>."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict, str | None]] = []  # (tag, attrs, section id)
        self.section_text: dict[str, list[str]] = {}
        self.text: list[str] = []
        self.raw: dict[str, list[str]] = {"script": [], "style": []}
        self._section: str | None = None
        self._depth = 0
        self._raw: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
        self.elements.append((tag, a, self._section))
        if tag in self.raw:
            self._raw = tag
            self.raw[tag].append("")

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag == self._raw:
            self._raw = None

    def handle_data(self, data):
        if self._raw:
            self.raw[self._raw][-1] += data
            return
        self.text.append(data)
        if self._section:
            self.section_text.setdefault(self._section, []).append(data)

    def all(self, tag: str, section: str | None = None, **attrs) -> list[dict]:
        return [a for t, a, s in self.elements if t == tag and (section is None or s == section)
                and all(a.get(k) == v for k, v in attrs.items())]

    def in_section(self, section: str) -> str:
        return " ".join(" ".join(self.section_text.get(section, [])).split())

    @property
    def sections(self) -> list[str]:
        return [a["id"] for a in self.all("section")]


def decode(uri: str) -> tuple[str, bytes]:
    assert uri.startswith("data:"), uri[:80]
    head, payload = uri[5:].split(",", 1)
    assert head.endswith(";base64"), head
    return head[: -len(";base64")], base64.b64decode(payload, validate=True)


def check_images(page: Page) -> dict[str, int]:
    """Every <img> is an inlined PNG that decodes or an SVG that parses (with no script); counts per type."""
    from PIL import Image

    counts = {"image/png": 0, "image/svg+xml": 0}
    for img in page.all("img"):
        mime, data = decode(img["src"])
        assert img.get("alt"), "every image has alt text"
        if mime == "image/png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                assert im.width >= 8 and im.height >= 8
        elif mime == "image/svg+xml":
            root = ET.fromstring(data)
            assert root.tag == "{http://www.w3.org/2000/svg}svg"
            assert not [e for e in root.iter() if str(e.tag).endswith("script")]
        else:
            raise AssertionError(f"unexpected image type {mime}")
        counts[mime] += 1
    return counts


def check_offline(page: Page, html: str) -> None:
    """Nothing is loaded from anywhere: no src/href but data: URIs and #fragments, no external CSS or script."""
    for tag, a, _ in page.elements:
        for key in ("src", "href", "srcset", "poster", "data"):
            if key in a and tag != "object":
                assert a[key].startswith(("data:", "#")), (tag, key, a[key][:80])
    assert not page.all("link"), "no <link> (stylesheets are inline)"
    assert all("src" not in a for a in page.all("script"))
    assert len(page.raw["style"]) == 1 and "@media print" in page.raw["style"][0]
    assert "url(" not in page.raw["style"][0] and "@import" not in page.raw["style"][0]


@pytest.fixture(scope="module")
def full(audited_run):
    path = render_report(audited_run)
    html = path.read_text(encoding="utf-8")
    return path, html, Page(html)


def test_every_section_is_there_with_its_content(full, audited_run, digits):
    path, html, page = full
    assert path == audited_run / REPORT_FILE
    assert page.sections == [s.id for s in SECTIONS]  # in the order of SECTIONS, each once
    assert [a["href"] for a in page.all("a") if a.get("href", "").startswith("#")] == [f"#{s}" for s in page.sections]
    assert not page.all("aside"), " ".join(page.text)[:2000]  # no notes: every file was read
    assert "Not in this report yet" not in html
    headings = [a for t, a, s in page.elements if t == "h2"]
    assert len(headings) == len(SECTIONS)

    summary = page.in_section("summary")
    for fact in ("digits", "1,297 / 500", "models trained", "400", "diverged", "test accuracy of a model trained at α",
                 "mean non-zero weights"):
        assert fact in summary, fact
    for step in ("train", "fit", "brittleness", "mislabel", "leakage"):
        assert f" {step} " in f" {summary} ", step

    quality = page.in_section("quality")
    assert "datamodels (LASSO)" in quality and "difference of means" in quality
    assert "tracin (TracIn-CP" in quality and "influence (influence function" in quality  # the score matrices
    assert "tracin.npy" in page.in_section("gradients")  # the generic section: the step's summary
    ev = json.loads((audited_run / "evaluation.json").read_text())
    assert render.fmt(ev["test"]["lds_mean"]) in quality
    assert len(page.all("img", "quality")) == 5  # scatter (test, train), LDS (test, train), MSE

    nearest = page.all("figure", "nearest")
    assert len(page.all("div", "nearest", **{"class": "nrow"})) == 8
    assert sum("big" in a["class"] for a in nearest) == 8

    brittle = page.in_section("brittleness")
    for method in ("datamodels", "representation", "random"):
        assert method in brittle
    assert "Most brittle test images" in brittle and "support set" in brittle.lower()
    saved = json.loads((audited_run / "audits" / "brittleness.json").read_text())["summary"]
    verdict = saved.get("verdict") or ranking_verdict(saved["per_method"], "remove")  # older files: worked out
    assert " ".join(verdict["text"].split()) in brittle  # which ranking to trust, in so many words
    assert "Datamodels lose" not in page.in_section("mislabel") and "ranking on" not in page.in_section("mislabel")
    assert "relabelled to" in page.in_section("mislabel")

    leak = page.in_section("leakage")
    assert "Candidate pairs" in leak and "datamodels vs representation" in leak
    assert leak.index("Who finds what") < leak.index("Candidate pairs") and "candidate pairs proposed by" in leak
    assert "every ranking's top candidates (union" in leak and "by datamodels" in leak  # the union strip leads
    assert "Planted duplicates" in leak and "MTurk workers" in leak
    captions = " ".join(a["alt"] for a in page.all("img", "leakage"))
    assert "Fig. 12" in captions and "Fig. 40" in captions and "annotation score" in captions.lower()
    assert "★ planted copy" in leak  # the pairs shown are the planted ones, their copy marked

    check = page.in_section("check")
    assert "min_lds" in check and "max_brittle_fraction" in check and "fail" in check and "pass" in check
    status = json.loads((audited_run / "audits" / "check.json").read_text())
    assert ("check(s) passed" in check) == status["passed"] and ("check(s) failed" in check) != status["passed"]


def test_every_image_decodes_and_nothing_is_external(full):
    _, html, page = full
    counts = check_images(page)
    assert counts["image/svg+xml"] >= 12 and counts["image/png"] >= 100
    check_offline(page, html)


def test_sortable_tables_carry_numbers(full):
    _, html, page = full
    assert len(page.raw["script"]) == 1 and "table.sortable" in page.raw["script"][0]
    sortable = [a for a in page.all("table") if "sortable" in a.get("class", "")]
    assert len(sortable) >= 5
    sorts = [a["data-sort"] for a in page.all("td") if "data-sort" in a]
    assert len(sorts) > 20
    for s in sorts:
        if s:
            float(s)  # what parseFloat will read: a number, Infinity, or empty


def test_sections_appear_only_with_their_data(small_digits_run, tmp_path):
    run = copy_run(small_digits_run, tmp_path / "bare")
    page = Page(render_report(run).read_text(encoding="utf-8"))
    assert page.sections == ["summary", "nearest"]
    missing = " ".join(page.text)
    for command in ("audit evaluate", "audit brittleness", "audit mislabel", "audit leakage", "audit check"):
        assert command in missing
    (run / "datamodels.npz").unlink()
    (run / "fit.json").unlink()
    page = Page(render_report(run, out=tmp_path / "elsewhere" / "r.html").read_text(encoding="utf-8"))
    assert page.sections == ["summary"]
    assert (tmp_path / "elsewhere" / "r.html").exists()


def test_a_broken_audit_file_costs_only_its_section(audited_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(audited_run, run)
    (run / "audits" / "mislabel.json").write_text("{not json", encoding="utf-8")
    data = json.loads((run / "audits" / "brittleness.json").read_text())
    data["summary"]["per_method"] = {"datamodels": "not a dict"}
    (run / "audits" / "brittleness.json").write_text(json.dumps(data), encoding="utf-8")
    page = Page(render_report(run).read_text(encoding="utf-8"))
    assert "mislabel" not in page.sections and "brittleness" not in page.sections
    assert {"summary", "quality", "nearest", "leakage", "check"} <= set(page.sections)
    notes = " ".join(" ".join(page.text).split())
    assert "audits/mislabel.json could not be read" in notes
    assert "brittleness: data support section could not be drawn" in notes


def test_hostile_names_are_escaped(audited_run, digits, tmp_path, monkeypatch):
    """Class names, paths and audit strings with markup or commas show as text and break nothing."""
    from audit import pipeline

    evil = '<script>alert("x")</script>, "a,b" & $1$'
    run = tmp_path / f"run {evil.replace('/', '_')}"
    shutil.copytree(audited_run, run)
    classes = tuple(f"{evil} {c}" for c in digits.classes)
    monkeypatch.setattr(pipeline, "dataset_of", lambda store: dataclasses.replace(digits, classes=classes))
    data = json.loads((run / "audits" / "mislabel.json").read_text())
    for r in data["targets"]:
        r["wrong_class_name"] = evil
    (run / "audits" / "mislabel.json").write_text(json.dumps(data), encoding="utf-8")
    html = render_report(run).read_text(encoding="utf-8")
    page = Page(html)
    assert len(page.all("script")) == 1 and "alert" not in page.raw["script"][0]
    assert html.count("<script>") == 1
    text = " ".join(page.text)
    assert evil in text  # shown literally (unescaped back by the parser)
    assert str(run) in text
    check_images(page)  # the class names are in SVG legends too: they still parse
    assert page.sections == [s.id for s in SECTIONS]


def test_not_a_run_is_one_line_error(tmp_path):
    from audit.errors import AuditError

    with pytest.raises(AuditError, match="not a run directory"):
        render_report(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(AuditError, match="run.json is unreadable"):
        render_report(tmp_path)
    assert not (tmp_path / REPORT_FILE).exists()


def test_cli(audited_run, tmp_path):
    from tests.conftest import assert_one_line_error, run_cli

    out = tmp_path / "page.html"
    proc = run_cli("report", str(audited_run), "--out", str(out), "--examples", "3")
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout.replace("\n", "")
    page = Page(out.read_text(encoding="utf-8"))
    assert len(page.all("div", "nearest", **{"class": "nrow"})) == 3
    assert_one_line_error(run_cli("report", str(tmp_path / "nothing-here")))


def test_fmt_and_sortkey():
    assert render.fmt(None) == "–" and render.fmt(True) == "yes" and render.fmt(12345) == "12,345"
    assert render.fmt(0.12345) == "0.123" and render.fmt(float("inf")) == "∞" and render.fmt(float("nan")) == "–"
    assert render.fmt(1.5e-5) == "1.5e-05" and render.fmt(np.float32(2.0), 1) == "2.0"
    assert render.sortkey(None) == "" and render.sortkey(float("inf")) == "Infinity"
    assert render.sortkey("abc") == "" and float(render.sortkey(0.25)) == 0.25
    assert render.pct(0.123) == "12.3%" and render.pct(None) == "–"


def test_findings_come_first_and_every_image_has_its_labels(full):
    """The page opens with what is wrong with the data; every thumbnail says its given label and the
    full-data models' prediction (the run has reference models)."""
    import re

    _, html, page = full
    assert page.sections[0] == "findings"
    text = page.in_section("findings")
    assert "What we found" in text and "what to do" in text and "Severity rule" in text
    assert page.all("div", "findings") and any("finding" in (a.get("class") or "") for a in page.all("div", "findings"))
    thumbs = html.split('<figure class="thumb')[1:]
    assert len(thumbs) > 20
    for chunk in thumbs:
        caption = chunk.split("</figure>")[0]
        assert 'class="lbl"' in caption and re.search(r'class="pred( differs)?"', caption), caption[:300]


def test_counterfactual_section_has_the_scatter_and_the_correlations(full, audited_run):
    """Fig. 8: predicted vs actual effect, a colour per heuristic, and Spearman / Pearson per heuristic and overall."""
    from audit.audits.counterfactual import COUNTERFACTUAL

    _, _, page = full
    r = COUNTERFACTUAL.load(audited_run)
    text = " ".join(page.in_section("counterfactual").split())
    for heuristic in ("top", "bottom", "random", "all heuristics", "Spearman", "Pearson"):
        assert heuristic in text, heuristic
    assert render.fmt(r.overall.spearman) in text and render.fmt(r.per_heuristic["top"].pearson) in text
    images = page.all("img", "counterfactual")
    assert len(images) == 1 and "retrained" in images[0]["alt"]


def test_the_support_strip_shows_what_the_search_edited(tmp_path):
    """The examples shown under a brittle test image: those recorded as edited, else the top of the ranking the
    search used (embedding or weights), without examples already of the wrong class when it relabelled."""
    from types import SimpleNamespace

    from audit.audits.support import SupportRecord, datamodel_neighbours
    from audit.reports.data import DatamodelRows

    w = np.random.default_rng(0).normal(size=(35, 30)).astype(np.float32)
    np.savez(tmp_path / "dm.npz", weights=w, bias=np.zeros(35, np.float32))
    y = np.arange(30) % 3
    ctx = SimpleNamespace(datamodels=DatamodelRows(tmp_path / "dm.npz"), n_train=30,
                          images=SimpleNamespace(dataset=SimpleNamespace(y_train=y)))

    def record(wrong=None, **outcome):
        return SupportRecord.from_json({"target": 2, "wrong_class": wrong,
                                        "methods": {"datamodels": {"certified": False, "k_star": 3.0, **outcome}}})

    edited = record(certified=True, certified_support=2, edited=[7, 4])
    assert render._shown_support(ctx, "embedding", edited, 5) == [7, 4]
    near = datamodel_neighbours(w, np.array([32]), 30, 30)[0]
    assert render._shown_support(ctx, "embedding", record(), 4) == near[:4].tolist()
    assert render._shown_support(ctx, "embedding", record(wrong=1), 4) == [j for j in near if y[j] != 1][:4]
    assert render._shown_support(ctx, "weights", record(), 4) == np.argsort(-w[32], kind="stable")[:4].tolist()
    planned = {(2, "datamodels"): np.array([9, 3, -1]), (5, "datamodels"): np.array([1, 2, 3])}  # an older file's plan
    assert render._shown_support(ctx, "embedding", record(), 4, planned) == [9, 3]
    assert render._shown_support(ctx, "embedding", edited, 4, planned) == [7, 4]  # what was edited comes first
    assert render._shown_support(ctx, "weights", record(), 4, {}) == np.argsort(-w[32], kind="stable")[:4].tolist()


def test_leak_pairs_without_annotations_lead_with_the_largest_weight_among_the_candidates():
    """With the embedding first (--datamodel-ranking auto) a test image's first candidate need not have its largest
    weight (it may be negative): the order is by the largest weight of any candidate listed."""
    from types import SimpleNamespace

    from audit.audits.leakage_audit import Candidate

    ctx = SimpleNamespace(dataset=None, images=SimpleNamespace(example=lambda split, i, **kw: {"split": split, "i": i}))
    lists = {0: [Candidate(0, 5, 1, -0.2), Candidate(0, 6, 2, 0.9)],  # embedding's pick first, its weight negative
             1: [Candidate(1, 7, 1, 0.5), Candidate(1, 8, 2, 0.1)],
             2: [Candidate(2, 9, 1, None)]}  # no weight known: not ordered
    out = render._leak_pairs(ctx, None, {"datamodels": lists}, None, None, n_show=5, n_cand=2)
    assert [item["test"]["i"] for item in out["items"]] == [0, 1]
    assert out["order"] == "largest datamodel weight among the candidates first"
