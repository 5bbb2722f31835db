"""What the CPU trainers share: many small models trained at once, batched over models.

A block of B models is one set of batched parameters ``[B, ...]``. Each model draws its own
initialisation and its own per-epoch order of *its own* subset from a generator seeded with
its model seed, normalises its inputs with statistics of its own subset, and the loss is the
sum of per-model mean losses; torch's SGD is elementwise, so every model follows exactly the
trajectory it would follow alone. The MLP and the CNN differ only in their forward pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence, TypeVar

import numpy as np

from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.lazy import torch
from audit.progress import SILENT, Progress

STD_FLOOR = 0.1  # a feature's scale is at least this fraction of the subset's overall spread
LATER = {"translate": 0}  # settings added after runs were made, with the default those runs had
MAX_TRANSLATE = 4  # pixels: a random translation beyond this is no longer a small move of a small image
M = TypeVar("M")


class BatchedConfig(Protocol):
    """The optimisation settings every batched CPU trainer has."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    label_smoothing: float


def subset_moments(masks: np.ndarray, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model mean and scale ``[B, D]`` of quantities whose per-example first and second moments are
    ``first``/``second`` ``[N, D]``, over each model's own subset (``masks`` [B, N]).

    A model's normalisation is part of training on its subset, so it never sees the examples
    outside it (their presence would otherwise leak into every model). The scale is
    sqrt(var + (0.1·s)²) with s the subset's overall spread: a feature that is constant in a
    subset (a border pixel) is not blown up for the examples where it is not.
    """
    w = torch.from_numpy(np.asarray(masks, dtype=np.float64))  # [B, N]
    count = w.sum(1, keepdim=True).clamp_min(1.0)
    mean = (w @ first.double()) / count  # [B, D]
    var = ((w @ second.double()) / count - mean * mean).clamp_min(0.0)
    overall = var.mean(1, keepdim=True).sqrt()  # the subset's overall spread (root mean variance)
    std = (var + (STD_FLOOR * overall) ** 2).sqrt() + 1e-6
    return mean.float(), std.float()


def check_config(cfg: BatchedConfig, trainer: str, whole: Sequence[str]) -> None:
    """Every setting in its range, with one line naming the first that is not (``whole``: the
    settings that are whole numbers >= 1)."""
    for key in whole:
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AuditError(f"{trainer} option {key} must be a whole number >= 1 (got {value!r})")
    shift = getattr(cfg, "translate", 0)
    if not isinstance(shift, int) or isinstance(shift, bool) or not 0 <= shift <= MAX_TRANSLATE:
        raise AuditError(f"{trainer} option translate must be a whole number of pixels from 0 to {MAX_TRANSLATE} "
                         f"(got {shift!r})")
    ranges = {"lr": (0.0, math.inf, False), "momentum": (0.0, 1.0, True), "weight_decay": (0.0, math.inf, True),
              "label_smoothing": (0.0, 1.0, True)}
    for key, (low, high, low_ok) in ranges.items():
        value = getattr(cfg, key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and (value >= low if low_ok else value > low) and value < high
        if not ok:
            bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and < {high:g}" if math.isfinite(high) else "")
            raise AuditError(f"{trainer} option {key} must be a finite number {bound} (got {value!r})")


class BatchedModels:
    """B trained models evaluated together: logits and penultimate features from one ``_forward``."""

    n_models: int
    checkpoints: list[tuple[float, "BatchedModels"]]  # (mean learning rate of the epoch, models after it)

    def _forward(self, x: np.ndarray, want_features: bool) -> np.ndarray:
        raise NotImplementedError

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, want_features=False)

    def features(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, want_features=True)


if TYPE_CHECKING:  # an alias of torch types: evaluating it would import torch with the command line
    Setup = tuple[list[torch.Tensor], Callable[[torch.Tensor], torch.Tensor],
                  Callable[[list[torch.Tensor]], BatchedModels]]


class BatchedTrainer:
    """What a batched CPU trainer shares: its name, a validated config dataclass, ``config()`` and ``train_block``
    (each trainer supplies ``_setup``: its parameters, forward pass and models)."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    whole_settings: ClassVar[tuple[str, ...]]  # the settings that are whole numbers >= 1

    def __init__(self, **options) -> None:
        try:
            self.cfg: Any = self.config_class(**options)
        except TypeError as exc:
            raise AuditError(f"unknown option for the {self.name} trainer: {exc}") from None
        check_config(self.cfg, self.name, self.whole_settings)

    def config(self) -> dict:
        """The settings run.json records. One added later is recorded only away from its default (``translate``
        at 0 is left out), so a run made before it is still the same run and resumes."""
        return {"name": self.name, **{k: v for k, v in asdict(self.cfg).items() if k not in LATER or v != LATER[k]}}

    def _setup(self, dataset: Dataset, masks: np.ndarray, gens: Sequence[torch.Generator]) -> Setup:
        """The block's parameters (initialised from ``gens``), its forward pass (see :func:`train_models`)
        and how to wrap trained parameters as models."""
        raise NotImplementedError

    def train_block(self, dataset: Dataset, masks: np.ndarray, seeds: Sequence[int],
                    labels: np.ndarray | None = None, progress: Progress = SILENT,
                    checkpoints: bool = False) -> BatchedModels:
        """Train a block; ``checkpoints``: also keep the models after every epoch with the epoch's mean
        learning rate (``.checkpoints`` of the result; TracIn-CP sums over them)."""
        masks = np.asarray(masks, dtype=bool)
        y = block_labels(dataset.y_train, labels, len(masks))
        gens = model_generators(seeds)
        params, forward, wrap = self._setup(dataset, masks, gens)

        def snapshot() -> BatchedModels:
            return wrap([p.detach().clone() for p in params])

        saved = train_models(params, forward, y, masks, gens, self.cfg, snapshot if checkpoints else None, progress)
        model = wrap([p.detach() for p in params])
        model.checkpoints = saved
        return model


def as_channels_first(x: np.ndarray) -> torch.Tensor:
    """Images ``[N, H, W, C]`` (any number type) as float32 ``[N, C, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 3, 1, 2)))


def translated_batches(images: torch.Tensor, shift: int, gens: Sequence[torch.Generator]
                       ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``batch(idx)``: the images ``[N, C, H, W]`` of each model's minibatch ``idx`` ``[B, bs]`` as ``[B, bs, C, H, W]``,
    each moved by its own random whole-pixel translation of up to ``shift`` pixels in each direction (drawn from
    its model's generator; the uncovered border is 0). ``shift`` 0: the images as they are, no draws.

    The paper's models train with random crops of a padded image (a translation of a few pixels): an image and
    its copy moved by a pixel are then the same image seen at two offsets. On digits (benchmarks/README.md,
    "leakage_families.py") one pixel lets the MLP's datamodels find one-pixel-shifted copies (recall@10 0.10 →
    0.55) but makes them far less predictive (LDS 0.65 → 0.20), so the trainers' default is 0.
    """
    if shift == 0:
        return lambda idx: images[idx]
    n, c, h, w = images.shape
    wp = w + 2 * shift
    padded = torch.nn.functional.pad(images, (shift, shift, shift, shift)).reshape(n, c, -1)  # [N, C, (H+2s)(W+2s)]
    rows, cols = torch.arange(h), torch.arange(w)

    def batch(idx: torch.Tensor) -> torch.Tensor:
        b, bs = idx.shape
        moves = torch.stack([torch.randint(0, 2 * shift + 1, (bs, 2), generator=g) for g in gens])  # [B, bs, 2]
        r = rows[None, None, :, None] + moves[:, :, 0, None, None]  # [B, bs, H, 1] rows of the padded image
        q = cols[None, None, None, :] + moves[:, :, 1, None, None]  # [B, bs, 1, W]
        flat = (r * wp + q).reshape(b, bs, 1, h * w).expand(b, bs, c, h * w)
        return torch.gather(padded[idx], 3, flat).reshape(b, bs, c, h, w)

    return batch


def model_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One generator per model, seeded with its model seed: its initialisation and data order."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def uniform_init(gens: Sequence[torch.Generator], fan_in: int, *shape: int) -> torch.Tensor:
    """``[B, *shape]``: each model's tensor drawn from its own generator, uniform in ±1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.stack([(torch.rand(*shape, generator=g) * 2 - 1) * bound for g in gens])


def train_models(params: list[torch.Tensor], forward: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
                 masks: np.ndarray, gens: Sequence[torch.Generator], cfg: BatchedConfig,
                 snapshot: Callable[[], M] | None = None, progress: Progress = SILENT) -> list[tuple[float, M]]:
    """Train ``params`` in place by SGD (Nesterov momentum, one-cycle learning rate).

    ``forward(idx)`` maps example indices ``[B, bs]`` (model b's batch in row b) to logits ``[B, bs, C]``;
    ``y`` is ``[B, N]``. With ``snapshot``, returns ``(mean learning rate of the epoch, snapshot())``
    after every epoch (TracIn-CP sums over them); otherwise an empty list.
    """
    n_models, n = masks.shape
    sizes = torch.from_numpy(masks.sum(1))
    steps_per_epoch = max(1, math.ceil(int(sizes.max()) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    # OneCycleLR divides by pct_start*total_steps - 1: with ≤ 4 steps (tiny datasets) that is 0;
    # stepping fewer times than total_steps is allowed, and schedules of 5+ steps are unchanged
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 5), pct_start=0.25,
                                                anneal_strategy="linear", cycle_momentum=False)
    in_subset = torch.from_numpy(masks)
    rows = torch.arange(n_models)[:, None]
    saved: list[tuple[float, M]] = []
    with progress.task("training block", total=cfg.epochs, unit="epochs") as bar:
        for _ in range(cfg.epochs):
            # each model shuffles its own subset: random keys, examples outside the subset last
            keys = torch.stack([torch.rand(n, generator=g) for g in gens])
            order = torch.argsort(keys.masked_fill(~in_subset, 2.0), dim=1)
            lrs = []
            for step in range(steps_per_epoch):
                lrs.append(sched.get_last_lr()[0])
                pos = torch.arange(step * cfg.batch_size, min((step + 1) * cfg.batch_size, n))
                idx = order[:, pos]  # [B, bs]
                valid = (pos[None, :] < sizes[:, None]).float()
                out = forward(idx)
                loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y[rows, idx].reshape(-1),
                                                         reduction="none", label_smoothing=cfg.label_smoothing)
                per_model = (loss.view(n_models, -1) * valid).sum(1) / valid.sum(1).clamp_min(1.0)
                opt.zero_grad(set_to_none=True)
                per_model.sum().backward()
                opt.step()
                sched.step()
            if snapshot is not None:
                saved.append((float(np.mean(lrs)), snapshot()))
            bar.advance(1)
    return saved


def block_labels(dataset_labels: np.ndarray, labels: np.ndarray | None, n_models: int) -> torch.Tensor:
    """Each model's labels ``[B, N]``: the edited ``labels`` or the dataset's for every model."""
    return torch.from_numpy(np.broadcast_to(dataset_labels if labels is None else labels,
                                            (n_models, len(dataset_labels))).copy())
