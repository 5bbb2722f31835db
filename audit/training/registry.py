"""Trainer names -> trainer objects, and the default trainer for each dataset kind."""

from __future__ import annotations

from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.training.base import Trainer
from audit.training.cnn import CNNTrainer, require_images
from audit.training.gpu import DEFAULT_BLOCK_SIZE, gpu_config, make_gpu_trainer
from audit.training.mlp import MLPTrainer, check_translate

DEFAULT_TRAINER = {"digits": "mlp", "npz": "mlp", "cifar10": "resnet9", "fmow": "resnet18",
                   "folder": "mlp", "csv": "mlp", "hf": "mlp"}  # users' own images: CPU unless --trainer
GPU_TRAINERS = ("resnet9", "resnet18")
IMPORTED = "imported"  # the trainer of a run made by `audit import`: the release's models, none of our own


def make_trainer(name: str, **options) -> Trainer:
    """Build a trainer by name; GPU trainers fail fast with a clear line when CUDA is missing."""
    if name == "mlp":
        return MLPTrainer(**options)
    if name == "cnn":
        return CNNTrainer(**options)
    if name in ("resnet9", "resnet18"):
        return make_gpu_trainer(name, **options)
    if name == IMPORTED:
        trainer = options.get("trainer", "resnet9")
        raise AuditError(f"this run was imported from a published release and has no models of its own to "
                         f"train: this step retrains models, which needs the --trainer {trainer} on a CUDA GPU; "
                         f"train a run of your own with `audit train --trainer {trainer}` on a GPU machine")
    raise AuditError(f"unknown trainer '{name}': use mlp, cnn, resnet9 or resnet18")


def check_trainer_dataset(name: str, dataset: Dataset, options: dict | None = None) -> None:
    """One line, before any run directory exists, when trainer ``name`` (with ``options``) cannot train on
    ``dataset``."""
    if name == "cnn":
        require_images(dataset)
    if name == "mlp":
        check_translate((options or {}).get("translate", 0), dataset)


def trainer_config(name: str, **options) -> dict:
    """The validated config (as saved in run.json) of trainer ``name``, without building it:
    needs no GPU, so a CPU-only Ray driver can record a GPU trainer's run and send its config."""
    if name in GPU_TRAINERS:
        from dataclasses import asdict

        return {"name": name, **asdict(gpu_config(name, **options))}
    return make_trainer(name, **options).config()


def default_block_size(name: str) -> int:
    """Models per block for trainer ``name`` when the user gives none (needs no GPU)."""
    if name in GPU_TRAINERS:
        return DEFAULT_BLOCK_SIZE[name]
    return 250


def trainer_from_config(config: dict) -> Trainer:
    """Rebuild the trainer a run.json recorded."""
    options = dict(config)
    return make_trainer(options.pop("name"), **options)
