"""Reliability, measured: SIGKILL at random points then resume, concurrent writers, flush-before-done.

Kills land at random numbers of finished blocks plus a random delay (so inside a block,
between the row write and the done flag, during run creation). After every kill the
rows marked done must equal an uninterrupted run's rows bit for bit; the resumed run
must equal it entirely, and nothing may be trained twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from audit import pipeline
from audit.errors import AuditError
from audit.store import RunConfig, RunStore
from tests.conftest import FAST_MLP, ROOT

FAST = {**FAST_MLP, "epochs": 2}
SMALL = dict(n_models=20, block_size=5)
LARGE = dict(n_models=300, block_size=10)
# one intra-op thread here and in the subprocesses: identical arithmetic in both, and on a loaded
# 2-core machine two spinning torch threads per process cost far more than they give
ENV = {**os.environ, "AUDIT_QUIET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_cmd(run_dir: Path, n_models: int, block_size: int) -> list[str]:
    cmd = [sys.executable, "-m", "audit", "train", "digits", "--run", str(run_dir), "-m", str(n_models),
           "--block-size", str(block_size)]
    return cmd + [a for k, v in FAST.items() for a in ("-o", f"{k}={v}")]


def arrays(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = RunStore.open(run_dir, writable=False)
    return np.asarray(s.masks).copy(), np.asarray(s.margins).copy(), np.asarray(s.done).copy()


def n_done(path: Path, marker: str = "run.json", name: str = "done.npy") -> int:
    """Finished rows as seen from outside (0 while the folder is being created)."""
    if not (path / marker).exists():
        return 0
    try:
        return int(np.load(path / name).sum())
    except (OSError, ValueError):
        return 0


def kill_after(proc: subprocess.Popen, count, threshold: int, delay: float, timeout: float = 300) -> bool:
    """SIGKILL ``proc`` ``delay`` s after ``count()`` reaches ``threshold``; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and count() < threshold:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
    """Uninterrupted runs to compare against, by size."""
    out = {}

    def get(size: dict) -> tuple[np.ndarray, ...]:
        key = (size["n_models"], size["block_size"])
        if key not in out:
            path = tmp_path_factory.mktemp("ref") / "run"
            pipeline.train("digits", path, trainer_options=FAST, dataset=digits, **size)
            out[key] = arrays(path)
        return out[key]

    return get


def check_done_rows(run_dir: Path, ref: tuple[np.ndarray, ...], where: str) -> int:
    """Rows marked done equal the uninterrupted run's rows; returns how many are done."""
    if not (run_dir / "run.json").exists():
        return 0
    masks, margins, done = arrays(run_dir)
    r_masks, r_margins, _ = ref
    assert np.isfinite(margins[done]).all(), f"{where}: a row marked done has unwritten margins"
    assert np.array_equal(masks[done], r_masks[done]), f"{where}: a row marked done has a wrong mask"
    assert np.array_equal(margins[done], r_margins[done]), f"{where}: a row marked done has wrong margins"
    return int(done.sum())


def kill_resume(tmp_path: Path, digits, ref, size: dict, n_kills: int, seed: int,
                max_delay: float = 0.4) -> list[tuple[int, float, int]]:
    rng = np.random.default_rng(seed)
    run_dir = tmp_path / "cut"
    n, bs = size["n_models"], size["block_size"]
    points = []
    for i in range(n_kills):
        before = n_done(run_dir)
        # a kill point in the first half of what is left, so later kills still find models to cut short
        threshold = int(rng.integers(before, before + (n - before) // 2 + 1)) if before < n else n
        threshold = threshold - threshold % bs
        delay = float(rng.uniform(0, max_delay))
        proc = subprocess.Popen(train_cmd(run_dir, n, bs), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        killed = kill_after(proc, lambda: n_done(run_dir), threshold, delay)
        if not killed:
            assert proc.returncode == 0, proc.stderr.read().decode()
        after = check_done_rows(run_dir, ref, f"seed {seed}, kill {i} (after {threshold} done + {delay:.2f}s)")
        assert after >= before and after % bs == 0  # whole blocks only, never lost
        points.append((threshold, round(delay, 2), after))
    done_before = n_done(run_dir)
    summary = pipeline.train("digits", run_dir, trainer_options=FAST, dataset=digits, **size)
    assert summary["trained_now"] == n - done_before, "a model finished before a kill was trained again"
    for a, b in zip(ref, arrays(run_dir)):
        assert np.array_equal(a, b), f"seed {seed}: the resumed run differs from an uninterrupted one"
    return points


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path, digits, reference):
    seed = int(np.random.SeedSequence().entropy % 10**6)
    kill_resume(tmp_path, digits, reference(SMALL), SMALL, n_kills=2, seed=seed)


@pytest.mark.slow
def test_sigkill_many_times_on_a_larger_run(tmp_path, digits, reference):
    seed = int(np.random.SeedSequence().entropy % 10**6)
    # the delays stay within a few blocks: at ~250 models/s a 0.4 s delay let most kills come after the last model
    points = kill_resume(tmp_path, digits, reference(LARGE), LARGE, n_kills=6, seed=seed, max_delay=0.05)
    assert sum(a < LARGE["n_models"] for _, _, a in points) >= 3, points  # most kills landed mid-run


# ----- flush before done, deterministically -----------------------------------------------------
def _config(n_models: int = 4, n_train: int = 6, n_test: int = 2) -> RunConfig:
    return RunConfig(dataset="digits", fingerprint="x", n_train=n_train, n_test=n_test, alpha=0.5,
                     n_models=n_models, block_size=2)


def test_done_is_not_set_when_the_rows_could_not_be_flushed(tmp_path, monkeypatch):
    store = RunStore.create(tmp_path / "r", _config())
    real_flush = np.memmap.flush

    def failing_flush(self):
        if self.shape == store.margins.shape:  # the margins of this run: the disk is full
            raise OSError(28, "No space left on device")
        return real_flush(self)

    monkeypatch.setattr(np.memmap, "flush", failing_flush)
    with pytest.raises(OSError):
        store.write_rows(np.array([0, 1]), np.ones((2, 6), bool), np.ones((2, 8), np.float32))
    monkeypatch.setattr(np.memmap, "flush", real_flush)
    assert not np.load(tmp_path / "r" / "done.npy").any()
    assert not RunStore.open(tmp_path / "r").done.any()


def test_retraining_done_is_not_set_when_the_rows_could_not_be_flushed(tmp_path, monkeypatch):
    from audit.retrain import REMOVE, RetrainPlan, RetrainStore

    plan = RetrainPlan.build(np.array([[1, 2]]), np.array([REMOVE]), [0, 0], [0, 2], [0, 0], [0, 0])
    store = RetrainStore.open_or_create(tmp_path / "j", plan, seed=0, trainer={"name": "mlp"}, fingerprint="x",
                                        block_size=2)
    real_flush = np.memmap.flush
    monkeypatch.setattr(np.memmap, "flush", lambda self: (_ for _ in ()).throw(OSError(28, "disk full"))
                        if self.shape == store.margins.shape else real_flush(self))
    with pytest.raises(OSError):
        store.write_jobs(np.array([0, 1]), np.array([0, 1]), np.array([1.0, 2.0], np.float32))
    monkeypatch.setattr(np.memmap, "flush", real_flush)
    assert not np.load(tmp_path / "j" / "done.npy").any()


# ----- two writers -----------------------------------------------------------------------------
NOW = re.compile(r"\((\d+) now")


def test_two_train_processes_on_one_run_neither_corrupt_it_nor_train_a_model_twice(tmp_path, digits, reference):
    run_dir = tmp_path / "shared"
    procs = [subprocess.Popen(train_cmd(run_dir, **SMALL), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err
    trained = [int(NOW.search(" ".join(out.split())).group(1)) for out, _ in outs]
    masks, margins, done = arrays(run_dir)
    assert done.all()
    assert sum(trained) == SMALL["n_models"], f"models trained by each process: {trained}"
    for a, b in zip(reference(SMALL), (masks, margins, done)):
        assert np.array_equal(a, b)


def test_a_run_created_by_another_process_meanwhile_is_opened_not_wiped(tmp_path, monkeypatch):
    """Two processes start on a new folder: B checks 'no run.json', A creates the run and finishes a
    block, then B gets the lock. B must open A's run, not recreate the arrays over A's rows."""
    import audit.store as store_mod

    path, config = tmp_path / "r", _config()
    real_lock = store_mod.FileLock
    state = {"raced": False}

    class Racing:
        """The first lock B takes: process A wins the race just before B gets it."""

        def __init__(self, lock_file, *args, **kwargs):
            self._lock = real_lock(lock_file, *args, **kwargs)

        def __enter__(self):
            if not state["raced"]:
                state["raced"] = True
                monkeypatch.setattr(store_mod, "FileLock", real_lock)
                a = RunStore.create(path, _config())
                a.write_rows(np.array([0, 1]), np.ones((2, 6), bool), np.full((2, 8), 7.0, np.float32))
                monkeypatch.setattr(store_mod, "FileLock", Racing)
            self._lock.acquire()
            return self

        def __exit__(self, *exc):
            self._lock.release()

    monkeypatch.setattr(store_mod, "FileLock", Racing)
    try:
        RunStore.open_or_create(path, config)
    except AuditError:
        pass  # refusing is acceptable too; wiping A's rows is not
    monkeypatch.setattr(store_mod, "FileLock", real_lock)
    assert state["raced"]
    done = np.load(path / "done.npy")
    margins = np.load(path / "margins.npy")
    assert done[:2].all() and (margins[:2] == 7.0).all(), "a second creator wiped rows another process had finished"


def test_growing_a_run_that_another_process_grew_keeps_every_finished_row(tmp_path):
    path = tmp_path / "r"
    RunStore.create(path, _config(n_models=4))
    a = RunStore.open(path)  # process A's view: 4 models
    b = RunStore.open(path).grow(8)  # process B asks for 8 models and finishes models 4 and 5
    b.write_rows(np.array([4, 5]), np.ones((2, 6), bool), np.full((2, 8), 5.0, np.float32))
    a.write_rows(np.array([0, 1]), np.ones((2, 6), bool), np.full((2, 8), 3.0, np.float32))  # A, old view
    a.grow(8)  # A asks for 8 models too
    done, margins = np.load(path / "done.npy"), np.load(path / "margins.npy")
    assert done.shape == (8,) and done[[0, 1, 4, 5]].all() and not done[[2, 3, 6, 7]].any()
    assert (margins[[0, 1]] == 3.0).all() and (margins[[4, 5]] == 5.0).all()


# ----- retraining jobs under SIGKILL -------------------------------------------------------------
RETRAIN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from audit.data import load_dataset
    from audit.retrain import REMOVE, RetrainPlan, run_plan
    from audit.training.mlp import MLPTrainer
    root, opts = sys.argv[1], eval(sys.argv[2])
    ds = load_dataset("digits")
    lists = np.arange(40).reshape(2, 20)
    rows = [(l, k, r, ds.n_train + t) for l, t in ((0, 0), (1, 1)) for k in (0, 2, 4, 8, 16) for r in (0, 1, 2)]
    req = np.array(rows)
    plan = RetrainPlan.build(lists, np.array([REMOVE, 3]), req[:, 0], req[:, 1], req[:, 2], req[:, 3])
    trainer = MLPTrainer(**opts)
    margins, trained = run_plan(root, "kill", plan, ds, trainer, seed=0, trainer_config=trainer.config(),
                                fingerprint=ds.fingerprint(), block_size=2)
    np.save(root + "/result.npy", margins)
    print("trained", trained)
""")


def _retrain(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RETRAIN_SCRIPT, str(root), repr(FAST)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _job_dir(root: Path) -> Path | None:
    found = sorted(root.glob("kill-*"))
    return found[0] if found else None


def _retrain_done(root: Path) -> int:
    path = _job_dir(root)
    return 0 if path is None else n_done(path, marker="plan.json")


@pytest.mark.slow
def test_retraining_sigkill_then_resume_equals_uninterrupted(tmp_path):
    ref = _retrain(tmp_path / "ref")
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    expected = np.load(tmp_path / "ref" / "result.npy")
    n_jobs = int(np.load(_job_dir(tmp_path / "ref") / "done.npy").size)
    rng = np.random.default_rng()
    root = tmp_path / "cut"
    trained_total = 0
    for _ in range(2):
        before = _retrain_done(root)
        if before >= n_jobs:  # the last kill came after every job was done: nothing left to cut
            break
        threshold = int(rng.integers(before, n_jobs)) // 2 * 2
        proc = _retrain(root)
        if not kill_after(proc, lambda: _retrain_done(root), threshold, float(rng.uniform(0, 0.3))):
            trained_total += int(proc.stdout.read().split()[-1])
            break
        path = _job_dir(root)
        if path is not None and (path / "plan.json").exists():
            done = np.load(path / "done.npy")
            plan = np.load(path / "plan.npz")
            rows_done = done[plan["row_job"]]
            got = np.load(path / "margins.npy")
            assert np.array_equal(got[rows_done], expected[rows_done]), "a job marked done has unwritten margins"
    before = _retrain_done(root)
    proc = _retrain(root)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert int(out.split()[-1]) == n_jobs - before  # nothing finished is retrained
    assert np.array_equal(np.load(root / "result.npy"), expected)
