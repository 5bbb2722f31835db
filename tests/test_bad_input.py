"""The bad-input matrix: each case is one clear `error:` line, exit 2, no traceback, and leaves
every existing file byte for byte as it was (nothing half-written, nothing computed lost).

Cases run through the console entry point in-process (``tests.cli_inprocess``: the same
``audit.cli.main`` the script runs, without an interpreter start-up per case); a sample
runs in real subprocesses, and the whole matrix does under ``-m slow``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from tests.cli_inprocess import call_main
from tests.conftest import FAST_MLP, FIXTURES, assert_one_line_error, run_cli

FAST = {**FAST_MLP, "epochs": 1}


# ----- a small world of good inputs, made once -------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory, digits):
    """good.npz (a digits subset), a trained + fitted run on it with a leakage audit and an MTurk
    export, and copies of the CIFAR-10 and FMoW fixtures. Cases copy what they damage."""
    from audit import pipeline
    from audit.audits.leakage_audit import run_leakage

    root = tmp_path_factory.mktemp("world")
    good = root / "good.npz"
    np.savez(good, x_train=digits.x_train[:300], y_train=digits.y_train[:300], x_test=digits.x_test[:60],
             y_test=digits.y_test[:60], class_names=np.array([str(c) for c in digits.classes]))
    run = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded machine the LASSO fit is ~20x slower with 2 spinning threads
    try:
        pipeline.train(f"npz:{good}", run, n_models=24, block_size=12, trainer_options=FAST)
        pipeline.fit(run, n_lambdas=4)
        run_leakage(run, mturk_export=root / "mturk", image_base_url="https://example.org/img", mturk_sample=3)
    finally:
        torch.set_num_threads(threads)
    return root


def npz_from_good(world: Path, name: str, **changes) -> Path:
    """A copy of good.npz with some arrays replaced (value None: key removed)."""
    with np.load(world / "good.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path = world / "cases" / f"{name}.npz"
    path.parent.mkdir(exist_ok=True)
    np.savez(path, **arrays)
    return path


def copy_run(world: Path, name: str) -> Path:
    dst = world / "cases" / name
    shutil.copytree(world / "run", dst, ignore=shutil.ignore_patterns("claims", "*.lock"))
    return dst


def cifar_copy(world: Path, name: str) -> Path:
    dst = world / "cases" / name
    shutil.copytree(FIXTURES / "cifar10", dst)
    return dst / "cifar-10-batches-py"


def fmow_copy(world: Path, name: str) -> Path:
    dst = world / "cases" / name
    shutil.copytree(FIXTURES / "fmow", dst)
    return dst / "fmow_v1.1"


def kept_fmow_row(rows: list[dict]) -> tuple[int, dict]:
    """The first 2012 train row (one the loader keeps) and its image number k (rows without 'seq')."""
    kept = [r for r in rows if r["split"] != "seq"]
    k, row = next((k, r) for k, r in enumerate(kept) if r["split"] == "train" and r["timestamp"].startswith("2012"))
    return k, row


def fmow_image(folder: Path) -> Path:
    """The image file of a row the loader keeps."""
    with open(folder / "rgb_metadata.csv", newline="", encoding="utf-8") as fh:
        k, _ = kept_fmow_row(list(csv.DictReader(fh)))
    return folder / "images" / f"rgb_img_{k}.png"


def edit_fmow_row(folder: Path, column: str, value: str) -> None:
    """Set ``column`` of a row the loader keeps in rgb_metadata.csv."""
    path = folder / "rgb_metadata.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
        fields = list(rows[0])
    _, row = kept_fmow_row(rows)
    row[column] = value
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def drop_fmow_column(folder: Path, column: str) -> None:
    path = folder / "rgb_metadata.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    fields = [f for f in rows[0] if f != column]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def cifar_batch(folder: Path, name: str, edit: Callable[[dict], None]) -> None:
    with open(folder / name, "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    edit(batch)
    with open(folder / name, "wb") as fh:
        pickle.dump(batch, fh)


def mturk_results(world: Path, name: str, edit: Callable[[list[dict]], None] | None = None,
                  drop: str | None = None) -> Path:
    """An MTurk batch results CSV for the world's export (every worker ticks candidate 0), edited."""
    from audit.audits.mturk import read_manifest

    ids, cands = read_manifest(world / "mturk")
    k = len(cands[ids[0]])
    rows = []
    for n, (t, w) in enumerate([(t, w) for t in ids for w in ("W1", "W2")]):
        row = {"HITId": f"H{t}", "AssignmentId": f"A{n}", "WorkerId": w, "AssignmentStatus": "Approved",
               "Input.test_id": str(t)}
        row.update({f"Input.cand{i}_id": str(j) for i, j in enumerate(cands[t])})
        row["Answer.taskAnswers"] = json.dumps([{f"c{i}": {"on": i == 0} for i in range(k)}])
        rows.append(row)
    if edit:
        edit(rows)
    fields = [f for f in rows[0] if f != drop]
    path = world / "cases" / f"{name}.csv"
    path.parent.mkdir(exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def train(spec: str, world: Path, *extra: str) -> list[str]:
    args = ["train", spec, "--run", str(world / "cases" / "new-run"), "-m", "4", "--block-size", "4",
            "--trainer", "mlp"]
    return args + [a for k, v in FAST.items() for a in ("-o", f"{k}={v}")] + list(extra)


# ----- the matrix ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """``setup(world)`` damages a copy of something and returns the CLI arguments."""

    setup: Callable[[Path], list[str]]
    needle: str  # a phrase the error line must contain


def _npz(name, needle, **changes):
    return Case(lambda w: train(f"npz:{npz_from_good(w, name, **changes)}", w), needle)


def _raw_npz(name, needle, write):
    def setup(w):
        path = w / "cases" / f"{name}.npz"
        path.parent.mkdir(exist_ok=True)
        write(w, path)
        return train(f"npz:{path}", w)
    return Case(setup, needle)


def _folder(kind: str, copy: Callable[[Path, str], Path], name: str, needle: str, damage) -> Case:
    """A damaged copy of a dataset folder fixture (CIFAR-10, FMoW), loaded by `audit train`."""
    def setup(w):
        folder = copy(w, name)
        damage(folder)
        return train(f"{kind}:{folder.parent}", w)
    return Case(setup, needle)


def _cifar(name, needle, damage):
    return _folder("cifar10", cifar_copy, name, needle, damage)


def _fmow(name, needle, damage):
    return _folder("fmow", fmow_copy, name, needle, damage)


def _run(name, needle, damage, command):
    def setup(w):
        run = copy_run(w, name)
        damage(run)
        return command(run)
    return Case(setup, needle)


def _mturk(name, needle, edit=None, drop=None):
    def setup(w):
        run = copy_run(w, name)
        csv_path = mturk_results(w, name, edit, drop)
        return ["leakage", str(run), "--mturk-results", str(csv_path)]  # against the run's last export
    return Case(setup, needle)


def _check(name, needle, toml_text=None, options=(), damage=None):
    def setup(w):
        run = copy_run(w, name)
        if damage:
            damage(run)
        args = ["check", str(run), *options]
        if toml_text is not None:
            cfg = w / "cases" / f"{name}.toml"
            cfg.write_text(toml_text)
            args += ["--config", str(cfg)]
        return args
    return Case(setup, needle)


def _digits_like(w):
    with np.load(w / "good.npz") as z:
        return {k: z[k] for k in z.files}


def _changed_labels(w):
    d = _digits_like(w)
    d["y_train"] = d["y_train"].copy()
    d["y_train"][0] = (d["y_train"][0] + 1) % 10
    return d


def _nan_pixels(w):
    x = _digits_like(w)["x_train"].astype(np.float32)
    x[7, 2, 3] = np.nan
    return x


def _other_dataset_run(run: Path) -> list[str]:
    """`audit train` on different data into an existing run directory."""
    other = npz_from_good(run.parent.parent, "other", y_train=(_digits_like(run.parent.parent)["y_train"] + 1) % 10)
    return ["train", f"npz:{other}", "--run", str(run), "-m", "24", "--block-size", "12"] + \
        [a for k, v in FAST.items() for a in ("-o", f"{k}={v}")]


def _data_changed_since(run: Path) -> list[str]:
    """The run's own data file was replaced by a different one (same path in run.json)."""
    changed = run.parent / "changed.npz"
    np.savez(changed, **_changed_labels(run.parent.parent))
    cfg = json.loads((run / "run.json").read_text())
    cfg["dataset"] = f"npz:{changed}"
    (run / "run.json").write_text(json.dumps(cfg))
    return ["evaluate", str(run), "--n-subsets", "10"]


def _write_garbage(path: Path, data: bytes = b"\x93NUMPY garbage") -> Callable[[Path], None]:
    return lambda run: (run / path).write_bytes(data)


def _mturk_unknown_id(rows):
    rows[1]["Input.test_id"] = "99999"


def _mturk_dup_worker(rows):
    rows[1]["WorkerId"] = rows[0]["WorkerId"]  # rows 0 and 1 are the same test image: one worker answers it twice


CASES: dict[str, Case] = {
    # --- dataset files: npz
    "npz missing file": Case(lambda w: train(f"npz:{w / 'cases' / 'nope.npz'}", w), "does not exist"),
    "npz empty file": _raw_npz("empty", "not a readable .npz", lambda w, p: p.write_bytes(b"")),
    "npz truncated": _raw_npz("trunc", "npz", lambda w, p: (shutil.copy(w / "good.npz", p), truncate(p))),
    "npz missing key": _npz("nokey", "lacks key(s) y_test", y_test=None),
    "npz x/y rows differ": _npz("rows", "must match", y_train=np.zeros(299, np.int64)),
    "npz wrong shape (5-D)": _npz("5d", "expected [N, H, W]", x_train=np.zeros((300, 2, 2, 2, 2), np.uint8)),
    "npz train/test shapes differ": _npz("hw", "must match", x_test=np.zeros((60, 4, 4), np.uint8)),
    "npz label out of range": _npz("label", "only 10 classes", y_test=np.full(60, 12)),
    "npz negative label": _npz("neg", "class labels start at 0", y_train=np.full(300, -1)),
    "npz NaN pixels": Case(lambda w: train(f"npz:{npz_from_good(w, 'nan', x_train=_nan_pixels(w))}", w),
                           "NaN or infinite"),
    "npz empty test split": _npz("empty-test", "split is empty", x_test=np.zeros((0, 8, 8), np.uint8),
                                 y_test=np.zeros(0, np.int64)),
    "npz lat outside ±90": _npz("lat", "outside -90..90", lat_train=np.full(300, 95.0), lon_train=np.zeros(300),
                                lat_test=np.zeros(60), lon_test=np.zeros(60)),
    "npz lat without lon": _npz("latonly", "lacks lon_train", lat_train=np.zeros(300), lat_test=np.zeros(60)),
    "npz pickled objects": _npz("obj", "pickled", x_train=np.array([None] * 300, dtype=object)),
    # --- dataset files: CIFAR-10 python folder
    "cifar10 missing folder": Case(lambda w: train(f"cifar10:{w / 'cases' / 'no-cifar'}", w), "no CIFAR-10 folder"),
    "cifar10 truncated batch": _cifar("c-trunc", "truncated", lambda f: truncate(f / "data_batch_3")),
    "cifar10 empty test_batch": _cifar("c-empty", "test_batch", lambda f: (f / "test_batch").write_bytes(b"")),
    "cifar10 label out of range": _cifar("c-label", "outside 0..9", lambda f: cifar_batch(
        f, "data_batch_2", lambda b: b[b"labels"].__setitem__(0, 12))),
    "cifar10 wrong image size": _cifar("c-shape", "expected [N, 3072]", lambda f: cifar_batch(
        f, "data_batch_1", lambda b: b.__setitem__(b"data", b[b"data"][:, :3000]))),
    "cifar10 missing batches.meta": _cifar("c-meta", "batches.meta", lambda f: (f / "batches.meta").unlink()),
    # --- dataset files: FMoW
    "fmow missing metadata": _fmow("f-meta", "rgb_metadata.csv is missing", lambda f: (f / "rgb_metadata.csv").unlink()),
    "fmow row without lat": _fmow("f-nolat", "no lat value", lambda f: edit_fmow_row(f, "lat", "")),
    "fmow lat outside ±90": _fmow("f-lat", "outside -90..90", lambda f: edit_fmow_row(f, "lat", "95.5")),
    "fmow lon not a number": _fmow("f-lon", "not a number", lambda f: edit_fmow_row(f, "lon", "east")),
    "fmow missing column": _fmow("f-col", "column", lambda f: drop_fmow_column(f, "category")),
    "fmow missing image": _fmow("f-img", "is missing", lambda f: fmow_image(f).unlink()),
    "fmow truncated image": _fmow("f-png", "cannot be read", lambda f: truncate(fmow_image(f), 0.3)),
    # --- training options
    "alpha above 1": Case(lambda w: train("digits", w, "--alpha", "1.5"), "between 0 and 1"),
    "alpha 0": Case(lambda w: train("digits", w, "--alpha", "0"), "between 0 and 1"),
    "more models than fit on disk": Case(lambda w: train("digits", w, "-m", str(10 ** 12)), "GiB"),
    "unknown dataset": Case(lambda w: train("imagenet", w), "unknown dataset"),
    "unknown trainer option": Case(lambda w: train("digits", w, "-o", "colour=blue"), "unknown option"),
    # --- run directories
    "run dir from another dataset": _run("r-other", "different dataset", lambda r: None, _other_dataset_run),
    "data changed since training": _run("r-changed", "no longer matches", lambda r: None, _data_changed_since),
    "corrupted margins.npy": _run("r-margins", "corrupted", _write_garbage(Path("margins.npy")),
                                  lambda r: ["fit", str(r)]),
    "truncated masks.npy": _run("r-masks", "corrupted", lambda r: truncate(r / "masks.npy", 0.7),
                                lambda r: ["fit", str(r)]),
    "corrupted run.json": _run("r-json", "run.json is unreadable", lambda r: truncate(r / "run.json"),
                               lambda r: ["fit", str(r)]),
    "corrupted datamodels.npz": _run("r-dm", "datamodels.npz", lambda r: truncate(r / "datamodels.npz"),
                                     lambda r: ["evaluate", str(r), "--n-subsets", "10"]),
    "not a run directory": Case(lambda w: ["fit", str(w / "cases")], "not a run directory"),
    # --- MTurk results
    "mturk missing column": _mturk("m-col", "missing column(s) Input.cand1_id", drop="Input.cand1_id"),
    "mturk unknown test id": _mturk("m-id", "not a test image of this export", edit=_mturk_unknown_id),
    "mturk duplicated worker": _mturk("m-dup", "answered test image", edit=_mturk_dup_worker),
    "mturk results file missing": Case(lambda w: ["leakage", str(copy_run(w, "m-none")), "--mturk-results",
                                                  str(w / "nope.csv")], "not found"),
    # --- audit check thresholds
    "thresholds file not TOML": _check("t-toml", "not valid TOML", "[check\nmin_lds = 0.1\n"),
    "threshold out of range": _check("t-range", "between 0 and 1", "[check]\nmax_brittle_fraction = 1.5\n"),
    "unknown threshold": _check("t-key", "did you mean min_lds", "[check]\nmin_lsd = 0.1\n"),
    "thresholds file missing": Case(lambda w: ["check", str(w / "run"), "--config", str(w / "nope.toml")],
                                    "not found"),
    "check without its result": _check("t-missing", "does not exist", options=("--max-brittle-fraction", "0.1")),
    "check on unreadable result": _check("t-bad", "unreadable", options=("--min-lds", "0.1"),
                                         damage=lambda r: (r / "evaluation.json").write_text("{")),
}


REVIEWED = set(CASES)  # the cases above; those below came from the reliability review (issue 15)

# --- every command: no arguments, an unknown option, a non-numeric value (typer's usage errors, one line)
COMMANDS = {  # command -> (a numeric option, the positional arguments it needs)
    "train": ("--n-models", ["digits"]), "fit": ("--n-lambdas", ["RUN"]), "evaluate": ("--n-subsets", ["RUN"]),
    "run": ("--n-models", ["digits"]), "brittleness": ("--n", ["RUN"]), "mislabel": ("--T", ["RUN"]),
    "check": ("--min-lds", ["RUN"]), "leakage": ("--k", ["RUN"]), "report": ("--examples", ["RUN"]),
    "data prepare": ("--jpeg-quality", ["digits"]), "findings": ("--top", ["RUN"]),
    "export": ("--top", ["RUN", "--to", "fiftyone"]),
}


def _usage(words: list[str]) -> Case:
    return Case(lambda w: [str(w / "run") if a == "RUN" else a for a in words], "--help")


for _cmd, (_opt, _pos) in COMMANDS.items():
    if _cmd != "run":  # `audit run` alone is a valid command: it audits digits, its default dataset
        CASES[f"{_cmd}: no arguments"] = _usage(_cmd.split())
    CASES[f"{_cmd}: unknown option"] = _usage([*_cmd.split(), *_pos, "--bogus"])
    CASES[f"{_cmd}: non-numeric value"] = _usage([*_cmd.split(), *_pos, _opt, "abc"])
CASES.update({
    "no command": _usage([]),
    "unknown command": _usage(["frobnicate"]),
    "data: no subcommand": _usage(["data"]),
    "report --examples 0": _usage(["report", "RUN", "--examples", "0"]),
})


# --- the hostile cases of the reliability review (issue 15), one per promise
def _labels_u64(w):
    y = _digits_like(w)["y_train"].astype(np.uint64)
    y[0] = np.uint64(2**64 - 3)
    return y


def _pixel(value):
    def make(w):
        x = _digits_like(w)["x_train"].astype(np.float32)
        x[3, 1, 1] = value
        return x
    return make


def _big_header(w: Path, path: Path) -> None:
    """good.npz with an x_train whose header claims 100 GB (and holds 64 bytes)."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**8, 1000)})
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in _digits_like(w).items():
            if key == "x_train":
                zf.writestr("x_train.npy", header.getvalue() + bytes(64))
            else:
                buf = io.BytesIO()
                np.save(buf, value)
                zf.writestr(f"{key}.npy", buf.getvalue())


def _npz_lambda(name, needle, make, key):
    return Case(lambda w: train(f"npz:{npz_from_good(w, name, **{key: make(w)})}", w), needle)


def _grow(n_models: int) -> Callable[[Path], list[str]]:
    """`audit train` on the run's own data and settings, asking for n_models."""
    return lambda run: ["train", f"npz:{run.parent.parent / 'good.npz'}", "--run", str(run), "-m", str(n_models),
                        "--block-size", "12"] + [a for k, v in FAST.items() for a in ("-o", f"{k}={v}")]


def _support_json(max_k: int, size) -> Callable[[Path], None]:
    """A brittleness.json whose grid ended at max_k, with one certified target of support ``size``."""
    def damage(run):
        rec = {"target": 0, "methods": {"datamodels": {"certified": True, "certified_support": size,
                                                       "curve": {str(k): 1.0 for k in range(max_k + 1)}}}}
        (run / "audits" / "brittleness.json").write_text(json.dumps({"summary": {"max_k": max_k},
                                                                     "targets": [rec]}))
    return damage


def _dataset_path(value: str) -> Callable[[Path], None]:
    def damage(run):
        cfg = json.loads((run / "run.json").read_text())
        cfg["dataset"] = value
        (run / "run.json").write_text(json.dumps(cfg))
    return damage


# settings of the support searches that only the run can refuse (its test set, training set, score matrices)
SUPPORT_SETTINGS = {
    f"{cmd} {' '.join(opts)}": Case(lambda w, cmd=cmd, opts=opts: [cmd, str(w / "run"), *opts], needle)
    for cmd, opts, needle in [
        ("mislabel", ("--methods", "datamodels,trak"), "unknown method trak"),
        ("brittleness", ("--targets", "3,999"), "not a test index"),
        ("mislabel", ("--k-grid", "0,3"), "increasing positive integers"),
        ("brittleness", ("--k-grid", "2,5000"), "fewer than the 300 training examples"),
        ("mislabel", ("--n", "0"), "at least 1"),
        ("brittleness", ("--methods", "representation", "--features", "/nonexistent/feats.npy"), "unreadable"),
    ]}


def _arrays(w: Path, name: str, **arrays) -> str:
    path = w / "cases" / name
    np.savez(path, **arrays) if name.endswith(".npz") else np.save(path, *arrays.values())
    return str(path)


CASES.update({
    **{f"leakage {' '.join(opts)}": Case(lambda w, opts=opts: ["leakage", str(w / "run"), *opts], needle)
       for opts, needle in [(("--k", "5", "--plant", "100000"), "plant between 1 and the 60"),
                            (("--plant", "5", "--plant-families", "bogus"), "choose among noise"),
                            (("--plant", "5", "--plant-models", "0"), "at least 20 models"),
                            (("--plant-families", "noise"), "only applies with --plant"),
                            (("--mturk-sample", "3"), "only applies with --mturk-export")]},
    "export --out under a file": Case(lambda w: ["export", str(w / "run"), "--to", "labelstudio", "-o",
                                                 str(w / "good.npz" / "sub")], "is a file, not a folder"),
    "report --out under a file": Case(lambda w: ["report", str(w / "run"), "-o", str(w / "good.npz" / "r.html")],
                                      "is a file, not a folder"),
    "report --out a folder": Case(lambda w: ["report", str(w / "run"), "-o", str(w / "cases")], "is a folder"),
    "--memory-gb inf": Case(lambda w: ["fit", str(copy_run(w, "mem")), "--memory-gb", "inf"], "memory-gb"),
    "import-scores --name union (leakage's list)": Case(
        lambda w: ["import-scores", _arrays(w, "s.npy", s=np.zeros((300, 60), np.float32)), "--run",
                   str(copy_run(w, "u")), "--name", "union"], "built-in ranking"),
    "--features all zeros": Case(lambda w: ["leakage", str(copy_run(w, "f0")), "--features",
                                            _arrays(w, "z.npy", z=np.zeros((360, 4), np.float32))], "all zeros"),
    "--features .npz of two arrays": Case(
        lambda w: ["leakage", str(copy_run(w, "f2")), "--features",
                   _arrays(w, "f.npz", a=np.zeros((360, 4)), b=np.zeros(3))], "holds 2 arrays (a, b); keep one"),
})


CASES.update({
    "huge label, no class_names (OOM)": _npz("hugelabel", "at most the 360 examples",
                                             y_train=np.r_[10**9, np.zeros(299, np.int64)],
                                             class_names=None),
    "uint64 label prints its real value": _npz_lambda("u64", "18446744073709551613", _labels_u64, "y_train"),
    "3e38 pixel": _npz_lambda("px", "3e+38", _pixel(3e38), "x_train"),
    "infinite pixel": _npz_lambda("inf", "NaN or infinite", _pixel(np.inf), "x_train"),
    "one class only": _npz("oneclass", "at least 2", y_train=np.zeros(300, np.int64), y_test=np.zeros(60, np.int64),
                           class_names=None),
    "zero-width images": _npz("zw", "at least 1", x_train=np.zeros((300, 8, 0), np.uint8),
                              x_test=np.zeros((60, 8, 0), np.uint8)),
    "npz header claims 100 GB": _raw_npz("bighdr", "truncated or corrupt", _big_header),
    "train --seed -1": Case(lambda w: train("digits", w, "--seed", "-1"), "--seed"),
    "brittleness --seed -1": Case(lambda w: ["brittleness", str(w / "run"), "--seed", "-1"], "--seed"),
    "-o hidden=-1": Case(lambda w: train("digits", w, "-o", "hidden=-1"), "hidden"),
    "-o hidden=abc": Case(lambda w: train("digits", w, "-o", "hidden=abc"), "hidden"),
    "-o batch_size=0": Case(lambda w: train("digits", w, "-o", "batch_size=0"), "batch_size"),
    "-o epochs=0": Case(lambda w: train("digits", w, "-o", "epochs=0"), "epochs"),
    "-o lr=nan": Case(lambda w: train("digits", w, "-o", "lr=nan"), "lr"),
    "-o translate=9": Case(lambda w: train("digits", w, "-o", "translate=9"), "translate"),
    "run --datamodel-ranking nearest": Case(lambda w: ["run", "digits", "--run", str(w / "cases" / "new-run"), "-m", "40",
                                                       "--datamodel-ranking", "nearest"], "datamodel-ranking"),
    "--block-size 0": Case(lambda w: train("digits", w, "--block-size", "0"), "block-size"),
    "--device tpu": Case(lambda w: ["fit", str(copy_run(w, "dev")), "--device", "tpu"], "unknown device"),
    "--run is a regular file": Case(lambda w: train("digits", w)[:2] + ["--run", str(w / "good.npz"), "-m", "4"],
                                    "is a file"),
    "grow a run beyond the disk": _run("r-grow", "GiB", lambda r: None, _grow(10**12)),
    "evaluate beyond the disk": Case(lambda w: ["evaluate", str(copy_run(w, "r-eval")), "--n-subsets",
                                                str(10**11)], "GiB"),
    "corrupted reference.npz (leakage)": _run("r-ref", "reference.npz", _write_garbage(Path("reference.npz"), b"PK junk"),
                                              lambda r: ["leakage", str(r)]),
    "corrupted reference.npz (brittleness)": _run(
        "r-ref2", "reference.npz", _write_garbage(Path("reference.npz"), b"PK junk"),
        lambda r: ["brittleness", str(r), "--n", "2", "--T", "1", "--k-grid", "1,2", "--methods", "representation"]),
    **SUPPORT_SETTINGS,
    "check k beyond the audit's grid": _check("t-grid", "beyond the largest k", options=("--max-brittle-fraction", "0.5"),
                                              damage=_support_json(8, 3)),
    "check non-numeric support": _check("t-num", "not a number", damage=_support_json(8, "small"),
                                        options=("--max-brittle-fraction", "0.5", "--support-k", "8")),
    "data moved away": _run("r-moved", "does not exist any more", _dataset_path("npz:/nonexistent/good.npz"),
                            lambda r: ["evaluate", str(r), "--n-subsets", "10"]),
    "relative data path from another folder": _run("r-rel", "relative to", _dataset_path("npz:data/good.npz"),
                                                   lambda r: ["evaluate", str(r), "--n-subsets", "10"]),
})


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root (lock files, which the locking library leaves, excepted)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def run_case(world: Path, name: str, runner) -> None:
    shutil.rmtree(world / "cases", ignore_errors=True)  # each case damages fresh copies
    (world / "cases").mkdir()
    args = CASES[name].setup(world)
    before = snapshot(world)
    proc = runner(*args)
    assert_one_line_error(proc)
    assert CASES[name].needle.lower() in proc.stderr.lower(), proc.stderr
    after = snapshot(world)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{name}: files written or changed by a failed command: {changed}"


# Known failures, each with the fix proposed to the owner of the module (strict: a fix makes them pass,
# and then this table must lose the entry).
KNOWN: dict[str, str] = {}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN[n])) if n in KNOWN else n
            for n in names]


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 100


@pytest.mark.parametrize("name", _params(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, name):
    run_case(world, name, call_main)


@pytest.mark.parametrize("runner", [call_main, run_cli], ids=["in-process", "console script"])
def test_support_settings_are_refused_before_the_cost_is_shown(world, runner):
    """A setting the run refuses is the only thing printed: no cost line (how many models, how long) for a
    search that will not run."""
    for name in SUPPORT_SETTINGS if runner is call_main else list(SUPPORT_SETTINGS)[:2]:
        proc = runner(*SUPPORT_SETTINGS[name].setup(world))
        assert_one_line_error(proc)
        assert SUPPORT_SETTINGS[name].needle in proc.stderr and proc.stdout.strip() == "", (name, proc.stdout)


SUBPROCESS_SAMPLE = ["npz truncated", "fmow row without lat", "run dir from another dataset", "threshold out of range"]


@pytest.mark.parametrize("name", SUBPROCESS_SAMPLE)
def test_bad_input_in_a_real_process(world, name, tmp_path):
    run_case(world, name, run_cli)


USAGE = [n for n in CASES if CASES[n].needle == "--help"]
# Usage errors all leave through the same handler of click's exceptions in the console script, and a process
# that stops at one starts in well under a second (torch is imported on first use), so the default run sends
# every one of them through a real process; the other cases do real work first, a sample here, all under -m slow.
REVIEW_SAMPLE = ["grow a run beyond the disk", "huge label, no class_names (OOM)", "-o lr=nan",
                 "corrupted reference.npz (leakage)", "check k beyond the audit's grid", "data moved away",
                 "--run is a regular file", "npz header claims 100 GB"]


def test_usage_errors_and_review_sample_in_real_processes(world):
    """Every usage case and a sample of the review's cases through the installed console script,
    two processes at a time: one `error:` line, exit 2, and not one file of the world changed
    (the other cases, one by one, under ``-m slow``)."""
    from multiprocessing.pool import ThreadPool

    names = USAGE + REVIEW_SAMPLE
    shutil.rmtree(world / "cases", ignore_errors=True)
    (world / "cases").mkdir()
    args = {name: CASES[name].setup(world) for name in names}  # every case damages its own copy
    before = snapshot(world)
    with ThreadPool(2) as pool:
        procs = dict(zip(names, pool.map(lambda n: run_cli(*args[n]), names)))
    wrong = {}
    for name, proc in procs.items():
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error: ") \
                or CASES[name].needle.lower() not in proc.stderr.lower():
            wrong[name] = (proc.returncode, proc.stderr[-300:])
    assert not wrong, wrong
    after = snapshot(world)
    assert before == after, sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@pytest.mark.slow
@pytest.mark.parametrize("name", _params([n for n in CASES if n not in SUBPROCESS_SAMPLE + USAGE + REVIEW_SAMPLE]))
def test_bad_input_in_a_real_process_all(world, name):
    run_case(world, name, run_cli)
