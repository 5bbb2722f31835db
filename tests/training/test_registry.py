"""Which trainer a dataset gets: the CPU trainer for digits/npz, the GPU trainers for cifar10/fmow."""

import json

import numpy as np
import pytest

from audit.data import dataset_kind
from audit.errors import AuditError
from audit.training.registry import DEFAULT_TRAINER, GPU_TRAINERS, make_trainer
from tests.conftest import FAST_MLP, run_cli


@pytest.mark.parametrize("spec,trainer", [("digits", "mlp"), ("npz:/d/feat.npz", "mlp"), ("cifar10", "resnet9"),
                                          ("cifar10:/d/cifar", "resnet9"), ("fmow:/d/wilds", "resnet18")])
def test_default_trainer_per_dataset_kind(spec, trainer):
    assert DEFAULT_TRAINER[dataset_kind(spec)] == trainer
    assert (trainer in GPU_TRAINERS) == (dataset_kind(spec) in ("cifar10", "fmow"))


def test_digits_run_records_the_cpu_trainer(small_digits_run):
    assert json.loads((small_digits_run / "run.json").read_text())["trainer"]["name"] == "mlp"


def test_cli_trains_an_npz_file_with_the_cpu_trainer(tmp_path, digits):
    npz = tmp_path / "feat.npz"
    np.savez(npz, x_train=digits.x_train[:200], y_train=digits.y_train[:200], x_test=digits.x_test[:50],
             y_test=digits.y_test[:50])
    run = tmp_path / "run"
    opts = [a for k, v in FAST_MLP.items() for a in ("-o", f"{k}={v}")]
    proc = run_cli("train", f"npz:{npz}", "--run", str(run), "-m", "4", "--block-size", "4", *opts)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "run.json").read_text())["trainer"]["name"] == "mlp"
    assert np.load(run / "done.npy").all()


def test_unknown_trainer_is_an_audit_error():
    with pytest.raises(AuditError, match="mlp, cnn, resnet9 or resnet18"):
        make_trainer("vit")
