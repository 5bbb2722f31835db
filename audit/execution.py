"""One executor for every kind of training: blocks of models, run locally or as Ray tasks.

Everything the tool trains — subset models (``audit.store.RunStore``), held-out evaluation
models, retraining plans of the support audits (``audit.retrain.RetrainStore``), full-data
reference models (``audit.reference.ReferenceStore``) — is a
*block store*: fixed blocks of models, each described by a picklable :class:`BlockTask`
(masks, seeds, optional edited labels, which targets to score) and written back with the
store's flush-then-done discipline. :func:`run_blocks` trains the pending blocks with the
local engine (one process, one block claim at a time) or with Ray (one task per block, the
driver writes the rows), so resume, determinism and the done flags are the same whichever
engine trained a block, and every kind of training can use a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import ContextManager, Protocol

import numpy as np

from audit import interrupt
from audit.contract import setting
from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.progress import SILENT, Progress, Within
from audit.training.base import Trainer, correct_class_margins
from audit.training.registry import GPU_TRAINERS, trainer_from_config

ENGINES = ("local", "ray")


def engine_setting():
    """The ``--engine`` setting of every step that trains models (one name and help everywhere)."""
    return setting("local", "--engine", "local or ray (a Ray cluster trains the blocks)", volatile=True)


def address_setting():
    """The ``--address`` setting that goes with :func:`engine_setting`."""
    return setting(None, "--address", "Ray cluster address (auto, ray://HOST:PORT; default: a local Ray instance)",
                   volatile=True)


@dataclass(frozen=True)
class BlockTask:
    """One block of models to train: everything a worker needs besides the dataset and trainer."""

    masks: np.ndarray  # bool [B, n_train]
    seeds: list[int]
    labels: np.ndarray | None = None  # int [B, n_train] edited labels, or None for the dataset's
    targets: np.ndarray | None = None  # target indices to score (train first, then test); None = all
    outputs: str = "margins"  # "margins" [B, T] or "reference": logits and penultimate features [B, T, C + F]
    # or "checkpoints": the same after every epoch, with the epoch's learning rate [B, epochs, T, C + F + 1]


class BlockStore(Protocol):
    """What the executor needs from a resumable table of models."""

    def pending_blocks(self) -> list[int]: ...

    def total_models(self) -> int: ...

    def block_models(self, block: int) -> int: ...

    def block_done(self, block: int) -> bool: ...

    def claim(self, block: int) -> ContextManager[bool]: ...

    def block_task(self, block: int, dataset: Dataset) -> BlockTask: ...

    def write_block(self, block: int, task: BlockTask, margins: np.ndarray) -> None: ...


def train_task(dataset: Dataset, trainer: Trainer, task: BlockTask, progress: Progress = SILENT) -> np.ndarray:
    """Train one block and return its margins ``[B, n_targets]`` (or ``[B, len(task.targets)]``);
    for ``outputs="reference"`` each target's logits then penultimate features ``[B, n_targets, C + F]``."""
    extra = {"checkpoints": True} if task.outputs == "checkpoints" else {}
    models = trainer.train_block(dataset, task.masks, task.seeds, task.labels, progress=progress, **extra)
    x, y = dataset.targets_x(), dataset.targets_y()
    if task.targets is not None:
        x, y = x[task.targets], y[task.targets]
    if task.outputs == "checkpoints":
        return np.stack([np.concatenate([m.logits(x), m.features(x), np.full((m.n_models, len(x), 1), lr)], axis=-1)
                         for lr, m in models.checkpoints], axis=1).astype(np.float32)
    if task.outputs == "reference":
        return np.concatenate([models.logits(x), models.features(x)], axis=-1).astype(np.float32)
    return correct_class_margins(models.logits(x), y)


def run_blocks(store: BlockStore, dataset: Dataset, trainer: Trainer | dict, *, engine: str = "local",
               address: str | None = None, progress: Progress = SILENT, description: str = "training models",
               max_blocks: int | None = None) -> int:
    """Train the store's pending blocks with ``engine`` (local or ray); returns the models trained.

    ``trainer`` may be a trainer or its ``config()`` dict (the Ray driver sends the config;
    the local engine builds the trainer from it).
    """
    if engine == "local":
        built = trainer_from_config(trainer) if isinstance(trainer, dict) else trainer
        return _run_local(store, dataset, built, progress=progress, description=description, max_blocks=max_blocks)
    if engine == "ray":
        return train_ray(store, dataset, trainer, address=address, progress=progress,
                         description=f"{description} (ray)")
    raise AuditError(f"unknown engine '{engine}': use local or ray")


def _run_local(store: BlockStore, dataset: Dataset, trainer: Trainer, *, progress: Progress, description: str,
               max_blocks: int | None) -> int:
    pending = store.pending_blocks()
    if max_blocks is not None:
        pending = pending[:max_blocks]
    trained = 0
    todo = sum(store.block_models(b) for b in pending)
    total = store.total_models()
    with progress.task(description, total=total, unit="models", completed=total - todo) as bar:
        for block in pending:
            interrupt.check()  # between blocks: a Ctrl-C lost in a finaliser stops here
            inner = Within(bar, store.block_models(block))  # the block's epochs move the bar as they go
            with store.claim(block) as mine:
                if mine and not store.block_done(block):
                    task = store.block_task(block, dataset)
                    store.write_block(block, task, train_task(dataset, trainer, task, progress=inner))
                    trained += store.block_models(block)
            inner.finish()
    return trained


def train_local(store: BlockStore, dataset: Dataset, trainer: Trainer, progress: Progress = SILENT,
                max_blocks: int | None = None) -> int:
    """Train every pending block this process can claim; returns the number of models trained."""
    return _run_local(store, dataset, trainer, progress=progress, description="training models",
                      max_blocks=max_blocks)


# ----- Ray ---------------------------------------------------------------------------------
_WORKER_TRAINERS: dict[str, Trainer] = {}


def _ray_block(dataset: Dataset, trainer_config: dict, masks: np.ndarray, seeds: list[int], threads: int | None,
               labels: np.ndarray | None = None, targets: np.ndarray | None = None,
               outputs: str = "margins") -> np.ndarray:
    """Body of one Ray task: rebuild the trainer (kept per worker process, so a GPU worker
    keeps its resident data and compiled steps across blocks) and train the block."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    key = json.dumps(trainer_config, sort_keys=True)
    if key not in _WORKER_TRAINERS:
        _WORKER_TRAINERS.clear()
        _WORKER_TRAINERS[key] = trainer_from_config(trainer_config)
    task = BlockTask(masks=masks, seeds=list(seeds), labels=labels, targets=targets, outputs=outputs)
    return train_task(dataset, _WORKER_TRAINERS[key], task)


def default_gpus_per_task(trainer_config: dict) -> float:
    """One GPU per Ray task for the GPU trainers (resnet9, resnet18), none for the CPU trainer."""
    return 1.0 if trainer_config.get("name") in GPU_TRAINERS else 0.0


@contextlib.contextmanager
def _quiet_ray_logs():
    """Library code prints nothing, but ``import ray`` gives the "ray" logger its own stderr
    handler, and ``ray.init`` warns there (Ray 2.60: "Token authentication is enabled ..." for
    every new local instance). Only errors get through while Ray starts; the level comes back after."""
    logger = logging.getLogger("ray")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def train_ray(store: BlockStore, dataset: Dataset, trainer: Trainer | dict, address: str | None = None,
              progress: Progress = SILENT, num_cpus: int | None = None, gpus_per_task: float | None = None,
              cpus_per_task: int = 1, description: str = "training models (ray)") -> int:
    """Train pending blocks as Ray tasks; the driver writes finished rows into the store.

    ``address`` None starts a local Ray instance; ``"auto"`` or ``ray://HOST:PORT`` joins
    an existing cluster. Each task trains one block. ``trainer`` may be a trainer or its
    ``config()`` dict (a driver without a GPU cannot build a GPU trainer, but can send its
    config). ``gpus_per_task`` defaults to 1 for the GPU trainers (resnet9, resnet18) and 0
    for the CPU trainer; GPU workers are reused across blocks (``max_calls=0``).
    """
    try:
        import ray  # deferred on purpose: Ray is an optional extra and slow to import
    except ImportError:
        raise AuditError("the ray engine needs Ray: pip install 'datamodel-audit[ray]'") from None
    init_kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        init_kwargs["address"] = address
    elif num_cpus:
        init_kwargs["num_cpus"] = num_cpus
    started_here = not ray.is_initialized()
    if started_here:
        try:
            with _quiet_ray_logs():
                ray.init(**init_kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AuditError(f"could not reach the Ray cluster at {address or 'a new local instance'}: "
                             f"{str(exc).splitlines()[0]}") from None
    try:
        config = trainer if isinstance(trainer, dict) else trainer.config()
        if gpus_per_task is None:
            gpus_per_task = default_gpus_per_task(config)
        n_gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if gpus_per_task > n_gpus:  # the tasks could never be scheduled: Ray would wait forever
            raise AuditError(f"the {config.get('name')} trainer's Ray tasks need {gpus_per_task:g} GPU each but the "
                             f"Ray cluster at {address or 'a new local instance'} has {n_gpus:g}; join a cluster "
                             f"with GPU nodes (--address), or use the CPU trainer")
        remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_calls=0)(_ray_block)
        data_ref = ray.put(dataset)
        pending = {}
        for block in store.pending_blocks():
            task = store.block_task(block, dataset)
            ref = remote.remote(data_ref, config, task.masks, task.seeds, cpus_per_task, task.labels, task.targets,
                                task.outputs)
            pending[ref] = (block, task)
        trained = 0
        with progress.task(description, total=sum(len(t.seeds) for _, t in pending.values()), unit="models") as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                block, task = pending.pop(ready[0])
                store.write_block(block, task, ray.get(ready[0]))
                trained += len(task.seeds)
                bar.advance(len(task.seeds))
        return trained
    finally:
        if started_here:
            ray.shutdown()
