"""A run's findings in the formats labelling tools import, so labels get fixed where people already work.

``labelstudio``: ``tasks.json`` in Label Studio's JSON task format (one task per flagged image:
``data.image`` points at the PNG written beside it, the other ``data`` fields carry the issues,
severity, score, evidence and suggested action, so the Data Manager can sort and filter by them;
``predictions`` hold the given label and, where the audits suggest another class, that class, as
choices of the ``label`` control), ``label_config.xml`` (an image classification interface over
the run's classes that also shows the headline and evidence) and a README.

``fiftyone``: a ``FiftyOneImageClassificationDataset`` directory (``data/<id>.png`` and
``labels.json`` with the given labels) plus ``audit_samples.json``: per image id, the tags and the
``audit_*`` fields (issue, severity, score, given and suggested class, evidence, action, rank) to
set on each sample, and a README with the few lines of Python that load both.

The export is built in a temporary folder next to ``out`` and renamed into place, so a failed
export leaves nothing half-written; an existing ``out`` is replaced only when it is an earlier
export (it holds ``audit-export.json``), never a folder of other files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from audit import findings as found_
from audit import pipeline
from audit.contract import Finding
from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.jsonio import _umask, atomic_write_text, cannot_write, check_output_place, write_json
from audit.reports.images import png_bytes

FORMATS = ("labelstudio", "fiftyone")
MARKER = "audit-export.json"
VIEW_PIXELS = 128  # small images are enlarged (nearest neighbour) to about this height
MODEL_VERSION = "datamodel-audit"


@dataclass(frozen=True)
class Example:
    """One flagged image: its findings (most urgent first) and the class the audits suggest for it."""

    split: str
    index: int
    findings: tuple[Finding, ...]
    rank: int  # 1-based rank of its most urgent finding in the run's findings

    @property
    def uid(self) -> str:
        return f"{self.split}-{self.index:06d}"

    @property
    def top(self) -> Finding:
        return self.findings[0]

    @property
    def suggested(self) -> int | None:
        """The class a likely label error points to (None: keep the given label)."""
        for f in self.findings:
            if f.issue == found_.LABEL_ERROR_ISSUE and f.predicted_label is not None:
                return f.predicted_label
        return None

    @property
    def tags(self) -> list[str]:
        return list(dict.fromkeys([f.issue for f in self.findings] + [f"severity:{self.top.severity}"]))


def examples_of(items: Sequence[Finding], issues: set[str] | None = None, top: int | None = None) -> list[Example]:
    """The flagged images in ranking order (one per image, however many findings it has), ``top`` at most."""
    grouped: dict[tuple[str, int], list[Finding]] = {}
    rank: dict[tuple[str, int], int] = {}
    for i, f in enumerate(items, 1):
        if issues is None or f.issue in issues:
            grouped.setdefault(f.key, []).append(f)
            rank.setdefault(f.key, i)
    out = [Example(s, i, tuple(fs), rank[(s, i)]) for (s, i), fs in grouped.items()]
    return out[:top] if top is not None else out


def export(run_dir: Path | str, fmt: str, out: Path | str | None = None, *, issues: set[str] | None = None,
           top: int | None = None, image_url_prefix: str | None = None) -> tuple[Path, int]:
    """Export the run's findings as ``fmt`` into ``out`` (default RUN/export/<fmt>); returns (folder, images)."""
    if fmt not in FORMATS:
        raise AuditError(f"--to {fmt!r}: choose {' or '.join(FORMATS)}")
    if top is not None and top < 1:
        raise AuditError(f"--top {top}: export at least one image")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export" / fmt
    check_target(out)
    prefix = url_prefix(image_url_prefix, out) if fmt == "labelstudio" else ""
    store = pipeline.RunStore.open(run_dir, writable=False)
    ds = pipeline.dataset_of(store)
    if not ds.is_image:
        raise AuditError(f"{store.config.dataset} holds feature vectors, not images; a labelling tool has nothing to "
                         "show")
    found = found_.collect(run_dir)
    unread = found_.unread_error(found, issues)  # an export without them would look complete to labellers
    if unread is not None:
        raise unread
    examples = examples_of(found.items, issues, top)
    with staging(out) as tmp:
        if fmt == "labelstudio":
            write_labelstudio(tmp, examples, ds, prefix)
        else:
            write_fiftyone(tmp, examples, ds)
        write_json(tmp / MARKER, {"format": fmt, "run": str(run_dir.resolve()), "dataset": store.config.dataset,
                                  "n_images": len(examples), "issues": sorted(issues) if issues else None})
    return out, len(examples)


# ----- the folder ------------------------------------------------------------------------------
def check_target(out: Path) -> None:
    """``out`` may be new, empty, or an earlier export; anything else is refused before work starts."""
    if out.exists() and not out.is_dir():
        raise AuditError(f"--out {out} is a file; give a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise AuditError(f"--out {out} holds other files (it is not an earlier export); give a new or empty folder")
    check_output_place(out, "--out", folder=True)


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block succeeds (an earlier export there
    is replaced), removed when it fails."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise cannot_write(out, "--out", exc) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # as a folder made by mkdir would be, not mkdtemp's 0700
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.{os.getpid()}.old") if out.exists() else None
    if old is not None:
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def url_prefix(given: str | None, out: Path) -> str:
    """Where Label Studio fetches the images: ``given`` (an http(s) URL or an absolute path on the Label Studio
    host), else its local-files URL for ``out`` served from the folder above it."""
    if given is None:
        return f"/data/local-files/?d={quote(out.resolve().name)}/"
    text = given.strip()
    if not text.startswith(("https://", "http://", "/")) or any(c.isspace() or ord(c) < 32 for c in text):
        raise AuditError(f"--image-url-prefix {given!r}: give an http(s) URL or a path starting with / "
                         "(no spaces or control characters)")
    return text if text.endswith(("/", "=")) else text + "/"


def write_images(folder: Path, examples: Iterable[Example], ds: Dataset) -> None:
    folder.mkdir()
    for e in examples:
        x = ds.x_train if e.split == "train" else ds.x_test
        img = np.asarray(x[e.index])
        (folder / f"{e.uid}.png").write_bytes(png_bytes(img, size=max(VIEW_PIXELS, img.shape[0])))


def _name(ds: Dataset, c: int | None) -> str | None:
    return ds.classes[c] if c is not None and 0 <= c < len(ds.classes) else None


def _given(ds: Dataset, e: Example) -> int:
    return int((ds.y_train if e.split == "train" else ds.y_test)[e.index])


def _source(ds: Dataset, e: Example) -> str:
    """Where the image came from (a folder or CSV dataset's path), for the person fixing the label."""
    return "; ".join(f"{k}: {v}" for k, v in ds.caption(e.split, e.index))


def fields_of(e: Example, ds: Dataset) -> dict:
    """The per-image values both formats carry (plain JSON)."""
    t = e.top
    return {"split": e.split, "index": e.index, "rank": e.rank, "issue": t.issue,
            "issues": [f.issue for f in e.findings], "severity": t.severity, "score": t.score,
            "given_label": _name(ds, _given(ds, e)), "suggested_label": _name(ds, e.suggested),
            "headline": t.headline, "evidence": " | ".join(f.evidence for f in e.findings),
            "action": t.action, "related_train_indices": sorted({j for f in e.findings for j in f.related}),
            "source": _source(ds, e)}


# ----- Label Studio ------------------------------------------------------------------------------
def label_config(classes: Sequence[str]) -> str:
    """An image classification interface over ``classes`` that shows each task's headline and evidence."""
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return ("<View>\n  <Image name=\"image\" value=\"$image\" zoom=\"true\"/>\n  <Header value=\"$headline\"/>\n"
            "  <Text name=\"evidence\" value=\"$evidence\"/>\n"
            f"  <Choices name=\"label\" toName=\"image\" choice=\"single\" showInLine=\"true\">\n{choices}\n"
            "  </Choices>\n</View>\n")


def labelstudio_task(e: Example, ds: Dataset, prefix: str) -> dict:
    """One task: the image, the findings as data fields, the given and suggested labels as predictions."""
    data = {"image": f"{prefix}images/{e.uid}.png", **fields_of(e, ds)}
    data["issues"] = ", ".join(data["issues"])
    data["related_train_indices"] = " ".join(map(str, data["related_train_indices"]))

    def prediction(version: str, label: str, key: str) -> dict:
        return {"model_version": version, "result": [{"id": f"{e.uid}-{key}", "from_name": "label", "to_name": "image",
                                                      "type": "choices", "value": {"choices": [label]}}]}

    predictions = [prediction("given label", data["given_label"], "given")]
    if data["suggested_label"] is not None and data["suggested_label"] != data["given_label"]:
        predictions.append(prediction(f"{MODEL_VERSION} suggestion", data["suggested_label"], "suggested"))
    return {"data": data, "predictions": predictions}


def write_labelstudio(folder: Path, examples: Sequence[Example], ds: Dataset, prefix: str) -> None:
    write_images(folder / "images", examples, ds)
    write_json(folder / "tasks.json", [labelstudio_task(e, ds, prefix) for e in examples])
    atomic_write_text(folder / "label_config.xml", label_config(ds.classes))
    atomic_write_text(folder / "README.txt", LABELSTUDIO_README.format(prefix=prefix))


LABELSTUDIO_README = """Findings of a datamodel-audit run for Label Studio.

tasks.json         one task per flagged image (most urgent first); data fields: issue, issues, severity,
                   score, given_label, suggested_label, headline, evidence, action, rank, split, index
label_config.xml   the labelling interface: the image, its headline and evidence, one choice per class
images/            the images (PNG), referenced from tasks.json as {prefix}images/<id>.png

1. Serve the images. With Label Studio's local files (the default references):
     LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \\
     LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<the folder that contains this folder> label-studio
   and add a Local Storage to the project whose path is this folder (do not sync it: tasks.json
   brings the tasks). Or upload images/ anywhere and export again with --image-url-prefix URL.
2. Create a project, paste label_config.xml under Settings > Labeling Interface.
3. Import tasks.json. Each task shows the given label and, for a likely label error, the suggested
   class as predictions; sort or filter the Data Manager by severity, score or issue.
"""


# ----- FiftyOne ----------------------------------------------------------------------------------
def write_fiftyone(folder: Path, examples: Sequence[Example], ds: Dataset) -> None:
    write_images(folder / "data", examples, ds)
    write_json(folder / "labels.json", {"classes": list(ds.classes),
                                        "labels": {e.uid: _given(ds, e) for e in examples}})
    samples = {}
    for e in examples:
        values = fields_of(e, ds)
        samples[e.uid] = {"tags": e.tags, "fields": {f"audit_{k}": v for k, v in values.items()
                                                     if k not in ("given_label", "suggested_label")}
                          | {"audit_given": values["given_label"], "audit_predicted": values["suggested_label"]}}
    write_json(folder / "audit_samples.json", {"samples": samples})
    atomic_write_text(folder / "README.txt", FIFTYONE_README)


FIFTYONE_README = """Findings of a datamodel-audit run for FiftyOne.

data/<id>.png        the flagged images; <id> is <split>-<index>
labels.json          their given labels (FiftyOneImageClassificationDataset format)
audit_samples.json   per <id>: "tags" (the issues and severity:<level>) and "fields" to set on the sample:
                     audit_issue, audit_issues, audit_severity, audit_score, audit_rank, audit_given,
                     audit_predicted (the class a likely label error points to, else null), audit_headline,
                     audit_evidence, audit_action, audit_related_train_indices, audit_split, audit_index,
                     audit_source

    import json, os
    import fiftyone as fo

    folder = "<this folder>"
    dataset = fo.Dataset.from_dir(dataset_dir=folder, label_field="ground_truth",
                                  dataset_type=fo.types.FiftyOneImageClassificationDataset)
    audit = json.load(open(os.path.join(folder, "audit_samples.json")))["samples"]
    for sample in dataset.iter_samples(autosave=True):
        info = audit[os.path.splitext(os.path.basename(sample.filepath))[0]]
        sample.tags.extend(info["tags"])
        for name, value in info["fields"].items():
            sample[name] = value
    session = fo.launch_app(dataset.sort_by("audit_rank"))
"""
