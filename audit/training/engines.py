"""Engines run a store's pending blocks: locally (one process) or as Ray tasks.

Both write through ``RunStore.write_rows``, so resume, determinism and the done flags are
the same whichever engine trained a block.
"""

from __future__ import annotations

import contextlib
import json
import logging

import numpy as np

from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.progress import SILENT, Progress
from audit.store import RunStore
from audit.training.base import Trainer, correct_class_margins
from audit.training.registry import GPU_TRAINERS, trainer_from_config


def train_block_margins(dataset: Dataset, trainer: Trainer, masks: np.ndarray, seeds: list[int]) -> np.ndarray:
    """Train one block and return margins on every target (train first, then test)."""
    models = trainer.train_block(dataset, masks, seeds)
    return correct_class_margins(models.logits(dataset.targets_x()), dataset.targets_y())


def train_local(store: RunStore, dataset: Dataset, trainer: Trainer, progress: Progress = SILENT,
                max_blocks: int | None = None) -> int:
    """Train every pending block this process can claim; returns the number of models trained."""
    pending = store.pending_blocks()
    if max_blocks is not None:
        pending = pending[:max_blocks]
    trained = 0
    total = sum(len(store.block_rows(b)) for b in pending)
    with progress.task("training models", total=total, unit="models") as bar:
        for block in pending:
            rows = store.block_rows(block)
            with store.claim(block) as mine:
                if not mine or np.asarray(store.done)[rows].all():
                    bar.advance(len(rows))
                    continue
                masks = store.subset_masks(rows)
                margins = train_block_margins(dataset, trainer, masks, store.model_seeds(rows))
                store.write_rows(rows, masks, margins)
                trained += len(rows)
            bar.advance(len(rows))
    return trained


_WORKER_TRAINERS: dict[str, Trainer] = {}


def _ray_block(dataset: Dataset, trainer_config: dict, masks: np.ndarray, seeds: list[int], threads: int | None):
    """Body of one Ray task: rebuild the trainer (kept per worker process, so a GPU worker
    keeps its resident data and compiled steps across blocks) and train the block."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    key = json.dumps(trainer_config, sort_keys=True)
    if key not in _WORKER_TRAINERS:
        _WORKER_TRAINERS.clear()
        _WORKER_TRAINERS[key] = trainer_from_config(trainer_config)
    return train_block_margins(dataset, _WORKER_TRAINERS[key], masks, seeds)


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


def train_ray(store: RunStore, dataset: Dataset, trainer: Trainer | dict, address: str | None = None,
              progress: Progress = SILENT, num_cpus: int | None = None, gpus_per_task: float | None = None,
              cpus_per_task: int = 1) -> int:
    """Train pending blocks as Ray tasks; the driver writes finished rows into the store.

    ``address`` None starts a local Ray instance; ``"auto"`` or ``ray://HOST:PORT`` joins
    an existing cluster. Each task trains one block. ``trainer`` may be a trainer or its
    ``config()`` dict (a driver without a GPU cannot build a GPU trainer, but can send its
    config). ``gpus_per_task`` defaults to 1 for the GPU trainers (resnet9, resnet18) and 0
    for the CPU trainer; GPU workers are reused across blocks (``max_calls=0``).
    """
    try:
        import ray
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
            rows = store.block_rows(block)
            masks = store.subset_masks(rows)
            ref = remote.remote(data_ref, config, masks, store.model_seeds(rows), cpus_per_task)
            pending[ref] = (rows, masks)
        trained = 0
        with progress.task("training models (ray)", total=sum(len(r) for r, _ in pending.values()),
                           unit="models") as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                rows, masks = pending.pop(ready[0])
                store.write_rows(rows, masks, ray.get(ready[0]))
                trained += len(rows)
                bar.advance(len(rows))
        return trained
    finally:
        if started_here:
            ray.shutdown()
