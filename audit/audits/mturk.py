"""Amazon Mechanical Turk round trip for the CIFAR leakage audit (paper App. H).

Export: one HIT per test image showing it and its candidate training images, each with a
``<crowd-checkbox name="c{i}">``; a batch input CSV whose columns are the template's
``${...}`` placeholders; the images as upscaled PNGs. MTurk substitutes ``${name}``
verbatim into the HTML, so every CSV value that lands in the page is HTML-escaped here.

Import: the batch results CSV from the requester site (``Input.<column>`` for the input
columns, then either one JSON column ``Answer.taskAnswers`` or flattened columns such as
``Answer.c0.on`` when the form uses ``answer-format="flatten-objects"``). Annotation score of
a (test, train) pair = fraction of the non-rejected workers who ticked it; leakage score of a
test image = max over its candidates.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from audit.errors import AuditError
from audit.jsonio import csv_text

CROWD_JS = "https://assets.crowd.aws/crowd-html-elements.js"
USABLE_STATUSES = {"submitted", "approved"}
REJECTED = "rejected"
HIST_EDGES = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class MTurkExport:
    """Paths of one export folder."""

    dir: Path
    batch_input: Path
    template: Path
    readme: Path
    manifest: Path
    images: tuple[Path, ...]


@dataclass
class MTurkResults:
    """Imported annotations: per-pair scores, per-test leakage scores, and a summary."""

    pairs: list[dict]
    leakage_score: dict[int, float]
    n_workers: dict[int, int]
    summary: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (ids as ints in rows, never as object keys)."""
        tests = [{"test_id": t, "n_workers": self.n_workers[t], "leakage_score": s}
                 for t, s in sorted(self.leakage_score.items())]
        return {"summary": self.summary, "tests": tests, "pairs": self.pairs}


# ----------------------------------------------------------------------------- export

def _image_png(img: np.ndarray, upscale: int, where: str) -> bytes:
    from PIL import Image

    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise AuditError(f"{where} has dtype {a.dtype}; MTurk export needs uint8 images [H, W, C]")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        im = Image.fromarray(a, mode="L")
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        im = Image.fromarray(a, mode="RGB" if a.shape[2] == 3 else "RGBA")
    else:
        raise AuditError(f"{where} has shape {a.shape}; MTurk export needs images [H, W] or [H, W, 1|3|4]")
    if upscale > 1:
        im = im.resize((im.width * upscale, im.height * upscale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _as_index_array(values, name: str, size: int, hint: str) -> np.ndarray:
    a = np.asarray(values)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise AuditError(f"{name} has dtype {a.dtype}; expected integer indices")
    a = a.astype(np.int64)
    bad = (a < 0) | (a >= size)
    if bad.any():
        pos = tuple(int(v) for v in np.argwhere(bad)[0])
        where = f"{name}[{', '.join(map(str, pos))}]"
        raise AuditError(f"{where} = {int(a[pos])} is not an image index 0..{size - 1}; {hint}")
    return a


def _columns(k: int, labels: bool) -> list[str]:
    cols = ["test_id", "test_image_url"] + (["test_label"] if labels else [])
    for i in range(k):
        cols += [f"cand{i}_id", f"cand{i}_url"] + ([f"cand{i}_label"] if labels else [])
    return cols


def render_template(k: int, title: str, instructions: str, labels: bool = False) -> str:
    """The static HIT page: ``${...}`` placeholders for the batch CSV, all literal text escaped.

    Every CSV column is used: images by URL, ids as hidden inputs (they come back with the answer).
    """
    e = html.escape
    cells = []
    for i in range(k):
        caption = f'\n      <div class="label">${{cand{i}_label}}</div>' if labels else ""
        cells.append(f"""    <div class="cand">
      <img src="${{cand{i}_url}}" alt="candidate {i + 1}">{caption}
      <crowd-checkbox name="c{i}">same scene / near duplicate</crowd-checkbox>
      <input type="hidden" name="cand{i}_id" value="${{cand{i}_id}}">
    </div>""")
    test_caption = '\n    <div class="label">${test_label}</div>' if labels else ""
    grid = "\n".join(cells)
    return f"""<script src="{CROWD_JS}"></script>
<style>
  .test img, .cand img {{ image-rendering: pixelated; width: 128px; height: 128px; border: 1px solid #888; }}
  .grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
  .cand {{ width: 150px; }}
  .label {{ font-size: small; color: #444; }}
</style>
<crowd-form>
  <h3>{e(title)}</h3>
  <p>{e(instructions)}</p>
  <div class="test">
    <p><strong>Test image</strong></p>
    <img src="${{test_image_url}}" alt="test image">{test_caption}
    <input type="hidden" name="test_id" value="${{test_id}}">
  </div>
  <p>Tick every candidate below that shows the same scene or a near duplicate of the test image.</p>
  <div class="grid">
{grid}
  </div>
</crowd-form>
"""


_README = """MTurk batch for the train-test leakage audit
==============================================

Files
  images/             PNGs ({n_images} files), upscaled {upscale}x with nearest-neighbour.
  batch_input.csv     one row per test image ({n_rows} HITs); columns = the template's ${{...}} placeholders.
  hit_template.html   the HIT layout (Crowd HTML Elements; one checkbox c0..c{last} per candidate).
  manifest.json       test ids and candidate ids of this export (used when importing the results).

Steps
  1. Upload the contents of images/ so that each file is publicly readable at
       {base_url}/<file name>        (for example test_0.png)
     e.g. an S3 bucket or any static web server with https.
  2. On the MTurk requester site (try the sandbox first: requestersandbox.mturk.com):
     Create > New Project > Other (custom template). Under "Design Layout" open the source
     editor and replace everything with the contents of hit_template.html. Set the number of
     assignments per task (workers per test image; 3-5 is typical) and the reward.
  3. Publish Batch: upload batch_input.csv. Preview a HIT and check that the images show.
  4. When the batch is done: Manage > Results > Download CSV. Approve/reject as you see fit;
     rows with AssignmentStatus "Rejected" are ignored on import.
  5. Import the downloaded results CSV with the audit (it checks that the Input.* columns
     match this export). Both answer layouts are accepted: the JSON column
     Answer.taskAnswers (default) and flattened Answer.c0.on columns.

Values in batch_input.csv that appear in the page are HTML-escaped, because MTurk pastes
${{...}} values into the HTML verbatim.

Scores: annotation score of a pair = fraction of workers who ticked it;
leakage score of a test image = the highest annotation score among its candidates.
"""


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an old export only at the end."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rmdir(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_batch(out_dir: Path | str, test_ids, cand_idx, images_test, images_train, image_base_url: str,
                 upscale: int = 4, *, title: str = "Are these images near duplicates?",
                 instructions: str = ("The first picture is a test image. Below are training images that might "
                                      "show the same scene. Tick each one that is the same scene or a near "
                                      "duplicate (allowing small changes in colour, crop or position)."),
                 classes: Sequence[str] | None = None, y_test=None, y_train=None) -> MTurkExport:
    """Write a complete MTurk batch for ``test_ids`` (indices into ``images_test``) and their
    candidate training indices ``cand_idx [n, k]`` (into ``images_train``).

    Files: ``images/test_{i}.png`` / ``images/train_{j}.png`` (each once), ``batch_input.csv``,
    ``hit_template.html``, ``README.txt``, ``manifest.json``. With ``classes`` (and the label
    arrays) each image gets a class caption. The folder appears only when complete.
    """
    images_test, images_train = np.asarray(images_test), np.asarray(images_train)
    if images_test.ndim not in (3, 4) or images_train.ndim not in (3, 4):
        raise AuditError(f"images have shapes {images_test.shape} and {images_train.shape}; MTurk export needs "
                         "image data [N, H, W, C], not feature vectors")
    ids = _as_index_array(test_ids, "test_ids", len(images_test), "pass indices into images_test").ravel()
    cand = np.asarray(cand_idx)
    if cand.ndim != 2 or cand.shape[0] != len(ids) or cand.shape[1] < 1:
        raise AuditError(f"cand_idx has shape {cand.shape}; expected [{len(ids)} test images, k candidates]")
    cand = _as_index_array(cand, "cand_idx", len(images_train),
                           "pass indices into images_train; every test image needs all k candidates (no -1)")
    if len(set(ids.tolist())) != len(ids):
        dup = next(t for t in ids.tolist() if ids.tolist().count(t) > 1)
        raise AuditError(f"test id {dup} appears twice in test_ids; export each test image once")
    if not isinstance(upscale, (int, np.integer)) or upscale < 1:
        raise AuditError(f"upscale = {upscale!r}; use a whole number >= 1")
    base = str(image_base_url).strip().rstrip("/")
    if not base:
        raise AuditError("image_base_url is empty; give the public URL where the images/ files will be served")
    labels = classes is not None
    names = [str(c) for c in classes] if classes is not None else []
    if labels:
        if y_test is None or y_train is None:
            raise AuditError("class captions need y_test and y_train along with classes")
        y_test, y_train = np.asarray(y_test), np.asarray(y_train)
        if len(y_test) != len(images_test) or len(y_train) != len(images_train):
            raise AuditError("y_test / y_train must have one label per image")

    def label(y: np.ndarray, i: int) -> str:
        v = int(y[i])
        if not 0 <= v < len(names):
            raise AuditError(f"label {v} of image {i} is outside the {len(names)} classes")
        return names[v]

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        img_dir = tmp / "images"
        img_dir.mkdir()
        written: list[str] = []

        def put(name: str, img: np.ndarray, where: str) -> None:
            (img_dir / name).write_bytes(_image_png(img, int(upscale), where))
            written.append(name)

        for t in ids.tolist():
            put(f"test_{t}.png", images_test[t], f"test image {t}")
        for j in sorted(set(cand.ravel().tolist())):
            put(f"train_{j}.png", images_train[j], f"training image {j}")

        def url(name: str) -> str:
            return html.escape(f"{base}/{name}", quote=True)

        k = cand.shape[1]
        columns = _columns(k, labels)
        rows = []
        for r, t in enumerate(ids.tolist()):
            row: list[Any] = [t, url(f"test_{t}.png")] + ([html.escape(label(y_test, t))] if labels else [])
            for j in cand[r].tolist():
                row += [j, url(f"train_{j}.png")] + ([html.escape(label(y_train, j))] if labels else [])
            rows.append(row)
        (tmp / "batch_input.csv").write_text(csv_text(rows, columns), encoding="utf-8", newline="")
        (tmp / "hit_template.html").write_text(render_template(k, title, instructions, labels), encoding="utf-8")
        (tmp / "README.txt").write_text(_README.format(n_images=len(written), upscale=int(upscale), n_rows=len(ids),
                                                       last=k - 1, base_url=base), encoding="utf-8")
        manifest = {"test_ids": ids.tolist(), "candidates": cand.tolist(), "n_candidates": k,
                    "image_base_url": base, "upscale": int(upscale), "columns": columns}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MTurkExport(dir=out, batch_input=out / "batch_input.csv", template=out / "hit_template.html",
                       readme=out / "README.txt", manifest=out / "manifest.json",
                       images=tuple(out / "images" / n for n in written))


def read_manifest(export_dir: Path | str) -> tuple[list[int], dict[int, list[int]]]:
    """Test ids and ``test_id -> candidate train ids`` of an export, for :func:`import_results`."""
    path = Path(export_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = [int(t) for t in data["test_ids"]]
        cands = {t: [int(j) for j in row] for t, row in zip(ids, data["candidates"])}
    except FileNotFoundError:
        raise AuditError(f"{path} not found; point at the folder written by the MTurk export") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path} is not a valid export manifest ({exc}); export the batch again") from None
    return ids, cands


# ----------------------------------------------------------------------------- import

def _truth(value: Any) -> bool | None:
    """A checkbox value -> bool; ``{"on": true}`` style dicts included; None if unreadable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("true", "1", "on", "yes", "checked"):
            return True
        if s in ("false", "0", "", "off", "no"):
            return False
        return None
    if isinstance(value, dict) and value:
        vals = [_truth(v) for v in value.values()]
        return None if any(v is None for v in vals) else any(vals)
    return None


def _marks(answer: Mapping[str, Any], k: int) -> list[bool] | str:
    """Ticked state of c0..c{k-1} in one assignment's answer, or a reason it is unreadable."""
    keys = [f"c{i}" for i in range(k)]
    scope: Mapping[str, Any] = answer
    if not any(key in answer for key in keys):
        nested = [v for v in answer.values() if isinstance(v, dict) and any(key in v for key in keys)]
        if len(nested) != 1:
            return f"no checkbox answers c0..c{k - 1} in {json.dumps(answer)[:80]}"
        scope = nested[0]
    marks = []
    for key in keys:
        if key not in scope:
            marks.append(False)
            continue
        t = _truth(scope[key])
        if t is None:
            return f"answer {key} = {json.dumps(scope[key])[:40]} is not a checkbox value"
        marks.append(t)
    return marks


def _answer_of(row: Mapping[str, str], answer_cols: Sequence[str]) -> dict | str:
    """The answer dict of one results row (JSON ``Answer.taskAnswers`` or flattened columns)."""
    raw = (row.get("Answer.taskAnswers") or "").strip()
    if raw:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            return f"Answer.taskAnswers is not JSON ({exc.msg})"
        if isinstance(data, list):
            if not data or not isinstance(data[0], dict):
                return "Answer.taskAnswers is not a list of answer objects"
            data = data[0]
        if not isinstance(data, dict):
            return "Answer.taskAnswers is not an answer object"
        return data
    nested: dict = {}
    filled = False
    for col in answer_cols:
        value = row.get(col)
        if value is None:
            continue
        filled = filled or value.strip() != ""
        node = nested
        parts = col[len("Answer."):].split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                return f"answer columns clash at {col}"
            node = nxt
        node[parts[-1]] = value
    if not filled:
        return "the row has no answer (empty Answer.* columns)"
    return nested


def import_results(csv_path: Path | str, test_ids: Iterable[int],
                   candidates: Mapping[int, Sequence[int]]) -> MTurkResults:
    """Read an MTurk batch results CSV for an export with these test ids and candidates.

    Rejected assignments are ignored. AuditError (naming the CSV row, header = row 1) for
    missing columns, unknown test ids, candidate ids that differ from the export, a worker
    answering the same test image twice, unreadable answers, or no usable assignment.
    """
    path = Path(csv_path)
    known = [int(t) for t in test_ids]
    cand_map = {int(t): [int(j) for j in js] for t, js in candidates.items()}
    missing_cand = [t for t in known if t not in cand_map]
    if missing_cand:
        raise AuditError(f"no candidates given for test id {missing_cand[0]}; pass the export's candidate lists")
    ks = {len(cand_map[t]) for t in known}
    if len(ks) > 1:
        raise AuditError("the export's test images have different numbers of candidates; expected the same k")
    k = ks.pop() if ks else 0
    known_set = set(known)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AuditError(f"{path} not found; download the batch results CSV from the MTurk requester site") from None
    except UnicodeDecodeError:
        raise AuditError(f"{path} is not UTF-8 text; download the results CSV again from MTurk") from None

    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    needed = ["WorkerId", "AssignmentStatus", "Input.test_id"] + [f"Input.cand{i}_id" for i in range(k)]
    absent = [c for c in needed if c not in header]
    answer_cols = [c for c in header if c.startswith("Answer.") and c != "Answer.taskAnswers"]
    if "Answer.taskAnswers" not in header and not answer_cols:
        absent.append("Answer.taskAnswers (or Answer.* columns)")
    if absent:
        raise AuditError(f"{path.name} row 1: missing column(s) {', '.join(absent)}; use the results CSV that "
                         "MTurk gives for a batch made from this export's batch_input.csv")

    marks_by_test: dict[int, list[list[bool]]] = {t: [] for t in known}
    seen: dict[tuple[str, int], int] = {}
    n_rows = n_rejected = 0
    workers: set[str] = set()
    for rownum, row in enumerate(reader, start=2):
        if None in row:
            raise AuditError(f"{path.name} row {rownum}: more values than header columns; the CSV is damaged")
        if all((v or "").strip() == "" for v in row.values()):
            continue  # blank line
        n_rows += 1
        where = f"{path.name} row {rownum}"
        status = (row.get("AssignmentStatus") or "").strip()
        if status.lower() == REJECTED:
            n_rejected += 1
            continue
        if status.lower() not in USABLE_STATUSES:
            raise AuditError(f"{where}: AssignmentStatus {status!r} is not Submitted, Approved or Rejected")
        raw_test = (row.get("Input.test_id") or "").strip()
        try:
            test = int(raw_test)
        except ValueError:
            test = None
        if test is None or test not in known_set:
            raise AuditError(f"{where}: Input.test_id {raw_test!r} is not a test image of this export; "
                             "import the results of the batch made from this export")
        for i, expected in enumerate(cand_map[test]):
            raw = (row.get(f"Input.cand{i}_id") or "").strip()
            if raw != str(expected):
                raise AuditError(f"{where}: Input.cand{i}_id is {raw!r} but the export has {expected} for test image "
                                 f"{test}; import the results of the batch made from this export")
        worker = (row.get("WorkerId") or "").strip()
        if not worker:
            raise AuditError(f"{where}: WorkerId is empty; every assignment needs its worker")
        if (worker, test) in seen:
            raise AuditError(f"{where}: worker {worker} answered test image {test} twice (also row "
                             f"{seen[(worker, test)]}); reject or remove one of the two assignments")
        seen[(worker, test)] = rownum
        answer = _answer_of(row, answer_cols)
        marks = _marks(answer, k) if isinstance(answer, dict) else answer
        if isinstance(marks, str):
            raise AuditError(f"{where}: cannot read the answer: {marks}")
        marks_by_test[test].append(marks)
        workers.add(worker)

    if not seen:
        raise AuditError(f"{path.name}: no usable assignments ({n_rows} rows, {n_rejected} rejected); "
                         "wait for workers to submit or download the results again")

    pairs: list[dict] = []
    leakage: dict[int, float] = {}
    n_workers: dict[int, int] = {}
    for t in known:
        answers = marks_by_test[t]
        if not answers:
            continue
        counts = np.sum(np.asarray(answers, dtype=np.int64), axis=0)
        n = len(answers)
        n_workers[t] = n
        scores = [int(c) / n for c in counts]
        leakage[t] = max(scores) if scores else 0.0
        for i, (j, c, s) in enumerate(zip(cand_map[t], counts.tolist(), scores)):
            pairs.append({"test_id": t, "train_id": j, "position": i, "n_workers": n, "n_marked": int(c),
                          "score": s})
    summary = _summary(known, leakage, n_workers, pairs, n_rows, n_rejected, len(workers))
    return MTurkResults(pairs=pairs, leakage_score=leakage, n_workers=n_workers, summary=summary)


def _hist(values: Sequence[float]) -> dict:
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(HIST_EDGES))
    return {"bin_edges": list(HIST_EDGES), "counts": counts.astype(int).tolist()}


def _summary(known: list[int], leakage: dict[int, float], n_workers: dict[int, int], pairs: list[dict],
             n_rows: int, n_rejected: int, n_distinct_workers: int) -> dict:
    scores = list(leakage.values())
    per_test = list(n_workers.values())
    unanswered = [t for t in known if t not in leakage]
    return {
        "n_rows": n_rows, "n_assignments_used": n_rows - n_rejected, "n_rejected": n_rejected,
        "n_workers": n_distinct_workers,
        "n_tests": len(known), "n_tests_answered": len(leakage), "n_tests_unanswered": len(unanswered),
        "unanswered_test_ids": unanswered,
        "workers_per_test": {"min": min(per_test), "mean": float(np.mean(per_test)), "max": max(per_test)},
        "leakage_score": {"mean": float(np.mean(scores)), "median": float(np.median(scores)),
                          "n_at_least_0.5": int(sum(s >= 0.5 for s in scores)),
                          "n_equal_1": int(sum(s >= 1.0 for s in scores)), "hist": _hist(scores)},
        "pair_score_hist": _hist([p["score"] for p in pairs]),
    }
