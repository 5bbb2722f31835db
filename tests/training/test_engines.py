import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from audit import pipeline
from audit.store import RunStore
from tests.conftest import FAST_MLP, ROOT

SMALL = dict(n_models=60, block_size=15, trainer_options=FAST_MLP)


def _arrays(run_dir):
    s = RunStore.open(run_dir, writable=False)
    return np.asarray(s.masks), np.asarray(s.margins), np.asarray(s.done)


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, digits):
    ref = tmp_path / "ref"
    pipeline.train("digits", ref, dataset=digits, **SMALL)
    cut = tmp_path / "cut"
    env = {**os.environ, "AUDIT_QUIET": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "audit", "train", "digits", "--run", str(cut), "-m", "60", "--block-size", "15"]
    cmd += [a for k, v in FAST_MLP.items() for a in ("-o", f"{k}={v}")]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once at least one block is done but not all
        if (cut / "done.npy").exists() and (cut / "run.json").exists():
            done = np.load(cut / "done.npy")
            if 0 < done.sum() < 60:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = np.load(cut / "done.npy")
    assert 0 < partial.sum() < 60, "the kill should land mid-run"
    pipeline.train("digits", cut, dataset=digits, **SMALL)
    for a, b in zip(_arrays(ref), _arrays(cut)):
        assert np.array_equal(a, b, equal_nan=True)


def test_done_rows_have_finite_margins_and_true_masks(tmp_path, digits):
    pipeline.train("digits", tmp_path / "r", dataset=digits, **SMALL)
    masks, margins, done = _arrays(tmp_path / "r")
    assert done.all() and np.isfinite(margins).all() and (masks.sum(1) == digits.n_train // 2).all()


def test_cli_ray_engine_trains_and_prints_nothing_on_stderr(tmp_path):
    pytest.importorskip("ray")
    from tests.conftest import run_cli

    run = tmp_path / "run"
    opts = [a for k, v in FAST_MLP.items() for a in ("-o", f"{k}={v}")]
    proc = run_cli("train", "digits", "--run", str(run), "-m", "4", "--block-size", "2", "--engine", "ray", *opts)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr  # no Ray start-up warnings
    assert np.load(run / "done.npy").all()


RAY_RUN = dict(n_models=30, block_size=15, trainer_options=FAST_MLP)


def test_ray_engine_equals_local(tmp_path, digits, local_ray):
    local, remote = tmp_path / "local", tmp_path / "ray"
    pipeline.train("digits", local, dataset=digits, **RAY_RUN)
    summary = pipeline.train("digits", remote, engine="ray", dataset=digits, **RAY_RUN)
    assert summary["trained_now"] == 30 and local_ray.is_initialized()  # the driver's instance is left running
    (ml, gl, dl), (mr, gr, dr) = _arrays(local), _arrays(remote)
    assert dl.all() and dr.all() and np.array_equal(ml, mr)
    np.testing.assert_allclose(gl, gr, rtol=1e-4, atol=1e-4)


def test_ray_engine_resumes_a_run_the_local_engine_began(tmp_path, digits, local_ray):
    from audit.execution import train_local, train_ray
    from audit.training.registry import make_trainer

    ref = tmp_path / "ref"
    pipeline.train("digits", ref, dataset=digits, **RAY_RUN)
    store = RunStore.open_or_create(tmp_path / "cut", RunStore.open(ref, writable=False).config)
    trainer = make_trainer("mlp", **FAST_MLP)
    assert train_local(store, digits, trainer, max_blocks=1) == 15  # stopped after the first block
    assert train_ray(store, digits, trainer) == 15                   # Ray trains only the pending block
    (mr, gr, dr), (mc, gc, dc) = _arrays(ref), _arrays(tmp_path / "cut")
    assert dc.all() and np.array_equal(mr, mc)
    np.testing.assert_allclose(gr, gc, rtol=1e-4, atol=1e-4)
    assert train_ray(store, digits, trainer) == 0                    # nothing left: no task


def test_ray_tasks_ask_for_a_gpu_only_for_gpu_trainers():
    from audit.execution import default_gpus_per_task
    from audit.training.registry import trainer_config

    assert default_gpus_per_task(trainer_config("resnet9")) == 1.0
    assert default_gpus_per_task(trainer_config("resnet18")) == 1.0
    assert default_gpus_per_task(trainer_config("mlp", **FAST_MLP)) == 0.0


def test_a_ray_worker_keeps_its_trainer_across_blocks(digits):
    from audit import execution as engines
    from audit.training.registry import trainer_config

    config = trainer_config("mlp", **FAST_MLP)
    masks = np.ones((2, digits.n_train), dtype=bool)
    first = engines._ray_block(digits, config, masks, [1, 2], None)
    trainer = engines._WORKER_TRAINERS[json.dumps(config, sort_keys=True)]
    again = engines._ray_block(digits, dict(config), masks, [1, 2], None)
    assert engines._WORKER_TRAINERS[json.dumps(config, sort_keys=True)] is trainer
    np.testing.assert_array_equal(first, again)


def test_ray_refuses_gpu_tasks_on_a_cluster_without_gpus(tmp_path, digits, local_ray):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a local Ray instance here would have GPUs")
    from audit.errors import AuditError
    from audit.store import RunConfig, RunStore
    from audit.execution import train_ray
    from audit.training.registry import trainer_config

    store = RunStore.create(tmp_path / "r", RunConfig(dataset="digits", fingerprint=digits.fingerprint(),
                                                      n_train=digits.n_train, n_test=digits.n_test, alpha=0.5,
                                                      n_models=2, block_size=2))
    with pytest.raises(AuditError, match="GPU"):
        train_ray(store, digits, trainer_config("resnet9"))  # refused before any task
    assert not np.asarray(store.done).any()
