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


def test_ray_engine_equals_local(tmp_path, digits):
    pytest.importorskip("ray")
    local, remote = tmp_path / "local", tmp_path / "ray"
    kw = dict(n_models=30, block_size=15, trainer_options=FAST_MLP, dataset=digits)
    pipeline.train("digits", local, **kw)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        pipeline.train("digits", remote, engine="ray", **kw)
    finally:
        ray.shutdown()
    (ml, gl, dl), (mr, gr, dr) = _arrays(local), _arrays(remote)
    assert dl.all() and dr.all() and np.array_equal(ml, mr)
    np.testing.assert_allclose(gl, gr, rtol=1e-4, atol=1e-4)


def test_ray_tasks_ask_for_a_gpu_only_for_gpu_trainers():
    from audit.training.engines import default_gpus_per_task
    from audit.training.registry import trainer_config

    assert default_gpus_per_task(trainer_config("resnet9")) == 1.0
    assert default_gpus_per_task(trainer_config("resnet18")) == 1.0
    assert default_gpus_per_task(trainer_config("mlp", **FAST_MLP)) == 0.0


def test_a_ray_worker_keeps_its_trainer_across_blocks(digits):
    from audit.training import engines
    from audit.training.registry import trainer_config

    config = trainer_config("mlp", **FAST_MLP)
    masks = np.ones((2, digits.n_train), dtype=bool)
    first = engines._ray_block(digits, config, masks, [1, 2], None)
    trainer = engines._WORKER_TRAINERS[json.dumps(config, sort_keys=True)]
    again = engines._ray_block(digits, dict(config), masks, [1, 2], None)
    assert engines._WORKER_TRAINERS[json.dumps(config, sort_keys=True)] is trainer
    np.testing.assert_array_equal(first, again)
