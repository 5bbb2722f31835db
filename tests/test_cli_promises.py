"""The README's promises, each through the installed console script (a real process) and the
in-process runner: Ctrl-C exits 130 and the same command resumes; a bug is one line, exit 1 and
a saved traceback; a full disk is one line with temporary files removed and finished rows intact;
outputs keep devices, FIFOs and symlinks and get umask modes; every CSV neutralises formulas;
read-only runs can be checked and reported; a shrunk evaluation reuses its models; all models
diverging is one line; run.json finds its data from any folder."""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli_inprocess import call_main
from tests.conftest import ROOT, assert_one_line_error, audit_command, run_cli
from tests.test_bad_input import FAST, copy_run, snapshot, world  # noqa: F401  (world: the shared fixture)

RUNNERS = {"subprocess": run_cli, "in-process": call_main}
OPTS = [a for k, v in FAST.items() for a in ("-o", f"{k}={v}")]


def _train_args(world: Path, run: Path, n_models: int, *extra: str) -> list[str]:
    return ["train", f"npz:{world / 'good.npz'}", "--run", str(run), "-m", str(n_models), "--block-size", "12",
            *OPTS, *extra]


# ----- Ctrl-C ------------------------------------------------------------------------------------
def _interrupt(args: list[str], ready, timeout: float = 300, delay: float = 0.3) -> subprocess.CompletedProcess:
    """Start the console script, send SIGINT once ``ready()`` holds, and collect it."""
    env = {**os.environ, "AUDIT_QUIET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*audit_command(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, f"the command ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _done(run: Path) -> int:
    try:
        return int(np.load(run / "done.npy").sum()) if (run / "run.json").exists() else 0
    except (OSError, ValueError):
        return 0


def test_ctrl_c_during_train_exits_130_and_the_same_command_resumes(world, tmp_path):
    run = tmp_path / "run"
    args = _train_args(world, run, 1200)
    proc = _interrupt(args, lambda: _done(run) >= 12, delay=0)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr.strip() == "interrupted; run the same command to resume (finished work is saved)"
    kept = _done(run)
    assert kept >= 12 and kept % 12 == 0 and not list(run.glob(".*.tmp"))
    masks, margins = np.load(run / "masks.npy"), np.load(run / "margins.npy")
    finished = np.load(run / "done.npy")
    assert np.isfinite(margins[finished]).all()
    assert kept < 1200, "the run finished before the interrupt"
    resumed = call_main(*args)  # the same command
    assert resumed.returncode == 0, resumed.stderr
    assert np.load(run / "done.npy").all()
    assert np.array_equal(np.load(run / "masks.npy")[:len(masks)][finished], masks[finished])
    assert np.array_equal(np.load(run / "margins.npy")[:len(margins)][finished], margins[finished])


def _cpu_seconds(pid: int) -> float:
    """CPU time a process has used (robust to a loaded machine, unlike wall time)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see when the fit is running")
def test_ctrl_c_during_fit_exits_130_and_leaves_no_half_file(small_digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_digits_run, run)
    (run / "datamodels.npz").unlink()
    procs: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        procs.append(real_popen(*args, **kwargs))
        return procs[-1]

    started = _startup_cpu_seconds()  # the same start-up (imports) before the fit begins
    subprocess.Popen = popen
    try:  # ~10 s of CPU fitting 100 lambdas after start-up: interrupt 2 s into the fit
        proc = _interrupt(["fit", str(run), "--n-lambdas", "100", "--device", "cpu"],
                          lambda: bool(procs) and _cpu_seconds(procs[0].pid) > started + 2.0)
    finally:
        subprocess.Popen = real_popen
    assert proc.returncode == 130 and "run the same command to resume" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run / "datamodels.npz").exists() and not list(run.glob(".*tmp*"))


def _startup_cpu_seconds() -> float:
    """CPU seconds the console script spends starting up (imports), measured on `audit --help`."""
    before = os.times()
    subprocess.run([*audit_command(), "--help"], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                   check=True)
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def test_ctrl_c_while_the_command_starts_up_exits_130_with_one_line(tmp_path):
    """A SIGINT during the imports (before the command line installs its handler) ends the same way."""
    proc = _interrupt(["fit", str(tmp_path / "nothing")], lambda: True, delay=0.2)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr.strip() == "interrupted; run the same command to resume (finished work is saved)"


# ----- internal errors ---------------------------------------------------------------------------
SITE = """
import audit.pipeline
def _boom(*args, **kwargs):
    raise ZeroDivisionError("an injected bug")
audit.pipeline.fit = _boom
"""


def _assert_internal_error(proc, folder: Path) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    m = re.fullmatch(r"error: internal error \(a bug\): ZeroDivisionError: an injected bug; traceback saved to (.+)",
                     lines[0])
    assert m, lines[0]
    saved = Path(m.group(1))
    assert saved.parent == folder and "Traceback" in saved.read_text() and "_boom" in saved.read_text()


def test_a_bug_is_one_line_exit_1_and_a_saved_traceback(world, tmp_path, monkeypatch):
    run = world / "run"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)  # the installed script, with a bug injected at start-up
    proc = run_cli("fit", run, env={"PYTHONPATH": f"{site}{os.pathsep}{ROOT}",
                                    "AUDIT_TRACEBACK_DIR": str(tmp_path / "tb1")})
    _assert_internal_error(proc, tmp_path / "tb1")

    def _boom(*args, **kwargs):
        raise ZeroDivisionError("an injected bug")

    import audit.pipeline

    monkeypatch.setattr(audit.pipeline, "fit", _boom)  # the same bug in this process
    monkeypatch.setenv("AUDIT_TRACEBACK_DIR", str(tmp_path / "tb2"))
    _assert_internal_error(call_main("fit", run), tmp_path / "tb2")


def test_broken_internal_invariants_are_internal_errors_not_bad_input():
    from audit.datamodels import target_rows
    from audit.errors import AuditError, InternalError
    from audit.retrain import REMOVE, RetrainPlan

    assert issubclass(AuditError, ValueError) and not issubclass(InternalError, AuditError)
    with pytest.raises(InternalError):
        target_rows(np.zeros((3, 5), bool), 4)
    with pytest.raises(InternalError):
        RetrainPlan.build(np.array([[1, 2]]), np.array([REMOVE, REMOVE]), [0], [1], [0], [0])


# ----- a full disk ---------------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_no_space_while_growing_is_one_line_and_keeps_every_finished_row(world, command, monkeypatch):
    run = copy_run(world, f"full-{command}")
    if command == "evaluate":
        assert call_main("evaluate", run, "--n-subsets", "6").returncode == 0
        store, args = run / "eval_r1", ["evaluate", str(run), "--n-subsets", "12"]
    else:
        store, args = run, _train_args(world, run, 36)
    before = {n: np.load(store / f"{n}.npy") for n in ("masks", "margins", "done")}
    files = snapshot(run)
    monkeypatch.setattr(os, "posix_fallocate", _enospc)  # the disk fills while the bigger arrays are made
    proc = call_main(*args)
    assert_one_line_error(proc)
    assert "no space left" in proc.stderr
    assert snapshot(run) == files and not list(store.glob(".*grow*"))
    for name, arr in before.items():
        assert np.array_equal(np.load(store / f"{name}.npy"), arr, equal_nan=True)


def test_too_little_free_space_is_refused_before_growing(world, monkeypatch):
    run = copy_run(world, "small-disk")
    files = snapshot(run)
    usage = shutil.disk_usage(run)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    proc = call_main(*_train_args(world, run, 48))
    assert_one_line_error(proc)
    assert "GiB" in proc.stderr and snapshot(run) == files


def test_no_space_while_writing_an_output_removes_the_temporary_file(world, tmp_path, monkeypatch):
    run = copy_run(world, "full-report")
    out = tmp_path / "report.html"
    out.write_text("the old report")
    monkeypatch.setattr("audit.jsonio.os.replace", _enospc)
    proc = call_main("report", run, "--out", out)
    assert_one_line_error(proc)
    assert "no space left" in proc.stderr
    assert out.read_text() == "the old report" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def checked_run(world: Path, name: str) -> Path:
    """A copy of the world's run with an evaluation.json, so `audit check --min-lds 0` passes."""
    from audit.jsonio import write_json

    run = copy_run(world, name)
    write_json(run / "evaluation.json", {g: {"lds_mean": 0.5, "n_targets": 60} for g in ("all", "train", "test")})
    return run


# ----- outputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("runner", RUNNERS)
def test_outputs_write_through_devices_and_fifos_follow_symlinks_and_use_umask_modes(world, tmp_path, runner):
    run_cli_or_main = RUNNERS[runner]
    run = checked_run(world, f"outputs-{runner}")
    # a device is written through, never replaced: /dev/full says the disk is full
    proc = run_cli_or_main("check", run, "--min-lds", "0", "--junit", "/dev/full")
    assert proc.returncode == 2 and "/dev/full" in proc.stderr, proc.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    # a FIFO is written through (a reader gets the page), and stays a FIFO
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    import threading

    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = run_cli_or_main("report", run, "--out", fifo, "--examples", "1")
    reader.join(timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got and b"<html" in got[0].lower()
    # a symlink is followed on purpose: the target gets the page, the link stays a link
    target, link = tmp_path / "target.html", tmp_path / "link.html"
    target.write_text("old")
    os.chmod(target, 0o640)
    link.symlink_to(target)
    proc = run_cli_or_main("report", run, "--out", link, "--examples", "1")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and "<html" in target.read_text().lower()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # an existing file keeps its mode
    # a new file gets the umask's mode, not mkstemp's 0600
    fresh = tmp_path / "new.html"
    old = os.umask(0o022)
    try:
        proc = run_cli_or_main("report", run, "--out", fresh, "--examples", "1")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


# ----- CSV formula injection -----------------------------------------------------------------------
FORMULAS = ["=1+1", "+1+1", "-2+3", "@SUM(1+1)", '=HYPERLINK("http://x","y")', "\tTAB", "\rCR", "plain"]
CSV_USERS = {"audit/jsonio.py"}  # the one module that writes CSV


def test_one_csv_writer_neutralises_formulas_and_keeps_numbers(tmp_path):
    from audit.jsonio import write_csv

    write_csv(tmp_path / "t.csv", [{"name": f, "value": -0.5, "n": -3} for f in FORMULAS], ["name", "value", "n"])
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["'" + f if f[0] in "=+-@\t\r" else f for f in FORMULAS]
    assert {r["value"] for r in rows} == {"-0.5"} and {r["n"] for r in rows} == {"-3"}
    writers = {str(p.relative_to(ROOT)) for p in (ROOT / "audit").rglob("*.py")
               if re.search(r"csv\.(writer|DictWriter)\(", p.read_text())}
    assert writers == CSV_USERS


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def test_every_csv_the_audits_write_neutralises_formula_class_names(world, tmp_path):
    """A dataset whose class names are formulas, through brittleness, mislabel, leakage and the
    MTurk export: no CSV cell that a spreadsheet would run (numbers we wrote stay numbers)."""
    names = FORMULAS[:4] + ["=HYPERLINK(\"http://evil\",\"x\")", "@A1", "+x", "-y", "=z", "ok"]
    with np.load(world / "good.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["class_names"] = np.array(names)
    data = tmp_path / "formulas.npz"
    np.savez(data, **arrays)
    run = tmp_path / "run"
    steps = [["train", f"npz:{data}", "--run", run, "-m", "24", "--block-size", "12", *OPTS],
             ["fit", run, "--n-lambdas", "4", "--device", "cpu"],
             ["brittleness", run, "--n", "4", "--T", "1", "--k-grid", "1,2", "--methods", "datamodels"],
             ["mislabel", run, "--n", "4", "--T", "1", "--k-grid", "1,2", "--methods", "datamodels"],
             ["leakage", run, "--mturk-export", tmp_path / "mturk", "--image-base-url", "https://e.org/i",
              "--mturk-sample", "4"]]
    for step in steps:
        proc = call_main(*step)
        assert proc.returncode == 0, (step[0], proc.stderr)
    written = sorted(run.rglob("*.csv")) + sorted((tmp_path / "mturk").rglob("*.csv"))
    assert {p.name for p in written} >= {"brittleness.csv", "mislabel.csv", "batch_input.csv",
                                         "leakage_candidates.csv", "findings.csv"}
    seen_names = 0
    for path in written:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                for cell in row:
                    if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                        assert _is_number(cell), f"{path.name}: {cell!r}"
                    seen_names += cell.startswith("'")
    assert seen_names > 0  # the formula names were there, neutralised


# ----- read-only runs ------------------------------------------------------------------------------
def _as_other_user() -> list[str] | None:
    """A prefix that runs a command without write permission on files we own (root ignores modes)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare"):
        probe = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", "true"],
                               capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    return None


def test_a_read_only_run_can_be_checked_and_reported_and_writers_say_it_is_not_writable(world, tmp_path):
    prefix = _as_other_user()
    if prefix is None:
        pytest.skip("running as root without user namespaces: file modes cannot be enforced")
    run = checked_run(world, "ro")
    for p in [run, *run.rglob("*")]:
        os.chmod(p, stat.S_IMODE(p.stat().st_mode) & ~0o222)
    files = snapshot(run)
    env = {**os.environ, "AUDIT_QUIET": "1", "PYTHONPATH": str(ROOT),
           "AUDIT_TRACEBACK_DIR": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}

    def audit(*args):
        return subprocess.run([*prefix, *audit_command(), *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=600)

    try:
        checked = audit("check", run, "--min-lds", "0")
        assert checked.returncode == 0 and "not writable" in checked.stderr and "Traceback" not in checked.stderr
        reported = audit("report", run, "--out", tmp_path / "r.html", "--examples", "1")
        assert reported.returncode == 0, reported.stderr
        for args, needle in ((["report", run], "--out"), (["fit", run], "not writable"),
                             (_train_args(world, run, 24), "not writable"), (["leakage", run], "not writable")):
            proc = audit(*args)
            assert_one_line_error(proc)
            assert needle in proc.stderr and "delete" not in proc.stderr, (args[0], proc.stderr)
        assert snapshot(run) == files
    finally:
        for p in [run, *run.rglob("*")]:
            os.chmod(p, stat.S_IMODE(p.stat().st_mode) | 0o200)


# ----- evaluation, divergence, paths ---------------------------------------------------------------
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_smaller_evaluation_reuses_the_first_models(world, runner):
    run = copy_run(world, f"shrink-{runner}")
    assert call_main("evaluate", run, "--n-subsets", "10").returncode == 0
    proc = RUNNERS[runner]("evaluate", run, "--n-subsets", "6")
    assert proc.returncode == 0, proc.stderr
    from audit.jsonio import read_json

    assert read_json(run / "evaluation.json")["n_subsets_requested"] == 6
    assert int(np.load(run / "eval_r1" / "done.npy").sum()) == 10  # nothing retrained


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_run_where_every_model_diverges_is_one_line(world, tmp_path, runner):
    args = ["train", f"npz:{world / 'good.npz'}", "--run", tmp_path / "div", "-m", "4", "--block-size", "4",
            *[a for k, v in {**FAST, "lr": 1e30}.items() for a in ("-o", f"{k}={v}")]]
    proc = RUNNERS[runner](*args)
    assert_one_line_error(proc)
    assert "diverged" in proc.stderr


@pytest.mark.parametrize("runner", RUNNERS)
def test_run_json_finds_its_data_from_any_folder(world, tmp_path, runner):
    here = tmp_path / "here"
    (here / "data").mkdir(parents=True)
    shutil.copy(world / "good.npz", here / "data" / "good.npz")
    train = call_main("train", "npz:data/good.npz", "--run", here / "run", "-m", "24", "--block-size", "12", *OPTS,
                      cwd=here)
    assert train.returncode == 0, train.stderr
    from audit.jsonio import read_json

    assert read_json(here / "run" / "run.json")["dataset"] == f"npz:{here / 'data' / 'good.npz'}"
    assert call_main("fit", here / "run", "--n-lambdas", "4", "--device", "cpu").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = RUNNERS[runner]("leakage", here / "run", "--k", "3", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
