"""GPU trainers: ResNet-9 (CIFAR-10) and ResNet-18 (FMoW), many models at once on one GPU.

Design (measured choices are in benchmarks/train_gpu.py):

- The training images live on the GPU for the whole block (uint8 NHWC, padded once with
  the channel means for random translation); augmentation (flip, translate, cutout) is a
  single gather plus a mask on the GPU, fused with normalisation into the compiled
  training step. No data loader sits on the training path.
- ``concurrent`` models train at once, each on its own CUDA stream, stepped round-robin
  from one Python thread, so the GPU overlaps one model's small kernels with another's.
- Each model draws its initialisation, data order and augmentation from its own
  ``torch.Generator`` seeded with its model seed (on the CPU), so a model does not depend on
  which other models share its block or group. On the CPU, the same seeds give bitwise the
  same models; on a GPU they agree up to GPU nondeterminism (cuDNN algorithm choice and
  reduction order differ in the last bits, and training amplifies that a little).
- bf16 autocast, channels_last and ``torch.compile`` on CUDA; plain fp32 eager on the CPU.
- Margins use flip test-time augmentation: logits are the mean of the image's and its
  mirror's. ``logits`` evaluates every target once per model in large chunks.

``make_gpu_trainer`` (what ``audit train`` uses) insists on CUDA and fails fast with one
line without it. ``GPUTrainer(name, cfg, device="cpu")`` runs the same step functions on
the CPU (fp32, eager, no streams or graphs) so tests can check the logic on tiny inputs.
The device is not part of the saved config: a run resumes, or a Ray worker rebuilds the
trainer, on whatever GPU it is given (choose one with ``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Sequence

import numpy as np

from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.lazy import no_grad, torch
from audit.progress import SILENT, Progress


def _build_model(name: str, n_classes: int, width: int, in_channels: int) -> "torch.nn.Module":
    """resnets.build_model, imported here: its nn.Module classes load torch, which the command line should not."""
    from audit.training.resnets import build_model

    return build_model(name, n_classes, width=width, in_channels=in_channels)


AUGMENTS = ("flip_translate_cutout", "flip_translate", "flip", "none")
PRECISIONS = ("bf16", "fp32")

# Published recipes (paper App. D.2 and the datamodels repository's CIFAR-10 script: SGD
# without Nesterov, triangular lr from 0 to the peak epoch and back to 0, label smoothing
# 0.1, flip + translate 2 px + 4x4 cutout, flip TTA) and the faster variant.
RECIPES: dict[str, dict[str, dict]] = {
    "resnet9": {
        "paper": dict(epochs=24, batch_size=512, lr=0.5, peak_epoch=5.0, momentum=0.9, weight_decay=5e-4,
                      label_smoothing=0.1, augment="flip_translate_cutout", concurrent=8),
        # same network and schedule shape, two thirds of the epochs (accuracy at alpha=0.5
        # not yet measured on CIFAR-10: see benchmarks/train_gpu.py)
        "fast": dict(epochs=16, batch_size=512, lr=0.5, peak_epoch=4.0, momentum=0.9, weight_decay=5e-4,
                     label_smoothing=0.1, augment="flip_translate_cutout", concurrent=8),
    },
    "resnet18": {
        # FMoW: from scratch, no augmentation, 15 epochs, batch 512, lr 0.4 peaking at epoch 6
        "paper": dict(epochs=15, batch_size=512, lr=0.4, peak_epoch=6.0, momentum=0.9, weight_decay=5e-5,
                      label_smoothing=0.0, augment="none", concurrent=2),
    },
}
# 'paper' is the default until the fast recipe's alpha=0.5 accuracy is measured >= 89.6%.
DEFAULT_RECIPE = {"resnet9": "paper", "resnet18": "paper"}
DEFAULT_BLOCK_SIZE = {"resnet9": 64, "resnet18": 32}


@dataclass(frozen=True)
class GPUConfig:
    """Every setting of a GPU trainer; ``config()`` saves all of them in run.json."""

    recipe: str
    epochs: int
    batch_size: int
    lr: float
    peak_epoch: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    augment: str
    concurrent: int
    translate: int = 2
    cutout: int = 4
    tta: bool = True
    width: int = 64
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = True
    cuda_graphs: bool = True
    eval_batch: int = 1024


def make_gpu_trainer(name: str, device: str = "cuda", **options) -> "GPUTrainer":
    """Build the ``resnet9`` or ``resnet18`` trainer on CUDA; AuditError for bad options or no CUDA.

    ``device`` is ``cuda`` or ``cuda:N``; ``options`` are ``recipe`` and any ``GPUConfig`` field.
    """
    cfg = gpu_config(name, **options)
    if not isinstance(device, str) or not (device == "cuda" or device.startswith("cuda:")):
        raise AuditError(f"the {name} trainer runs on CUDA only (device cuda or cuda:N, got {device!r}); "
                         f"on the CPU use --trainer mlp")
    return GPUTrainer(name, cfg, device=device)


def gpu_config(name: str, **options) -> GPUConfig:
    """The validated settings of trainer ``name`` (recipe defaults + ``options``); needs no GPU."""
    if name not in RECIPES:
        raise AuditError(f"unknown GPU trainer '{name}': use resnet9 or resnet18")
    recipe = str(options.pop("recipe", DEFAULT_RECIPE[name]))
    if recipe not in RECIPES[name]:
        raise AuditError(f"unknown recipe '{recipe}' for {name}: use {' or '.join(RECIPES[name])}")
    known = {f.name for f in fields(GPUConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AuditError(f"unknown option(s) for the {name} trainer: {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    base = dict(RECIPES[name][recipe])
    if "epochs" in options and "peak_epoch" not in options and isinstance(options["epochs"], (int, float)):
        # keep the schedule's shape: the peak moves with the number of epochs
        base["peak_epoch"] = round(base["peak_epoch"] * options["epochs"] / base["epochs"], 4)
    try:
        cfg = GPUConfig(recipe=recipe, **{**base, **options})
    except TypeError as exc:
        raise AuditError(f"bad options for the {name} trainer: {exc}") from None
    _check(name, cfg)
    return cfg


def _check(name: str, cfg: GPUConfig) -> None:
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "width": cfg.width,
                "concurrent": cfg.concurrent, "eval_batch": cfg.eval_batch}
    for key, value in positive.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
            raise AuditError(f"{name} option {key} must be a positive number (got {value!r})")
    for key in ("epochs", "batch_size", "width", "concurrent", "eval_batch", "translate", "cutout"):
        if not isinstance(getattr(cfg, key), int) or isinstance(getattr(cfg, key), bool):
            raise AuditError(f"{name} option {key} must be an integer (got {getattr(cfg, key)!r})")
    if not 0 <= cfg.peak_epoch <= cfg.epochs:
        raise AuditError(f"{name} option peak_epoch must lie in 0..epochs={cfg.epochs} (got {cfg.peak_epoch})")
    if not 0 <= cfg.label_smoothing < 1 or not 0 <= cfg.momentum < 1 or cfg.weight_decay < 0:
        raise AuditError(f"{name}: label_smoothing and momentum must lie in [0, 1) and weight_decay be >= 0")
    for key in ("tta", "channels_last", "compile", "cuda_graphs"):
        if not isinstance(getattr(cfg, key), bool):
            raise AuditError(f"{name} option {key} must be true or false (got {getattr(cfg, key)!r})")
    if cfg.translate < 0 or cfg.cutout < 0:
        raise AuditError(f"{name}: translate and cutout must be >= 0 pixels")
    if cfg.augment not in AUGMENTS:
        raise AuditError(f"{name} option augment must be one of {', '.join(AUGMENTS)} (got {cfg.augment!r})")
    if cfg.precision not in PRECISIONS:
        raise AuditError(f"{name} option precision must be bf16 or fp32 (got {cfg.precision!r})")


def _require_device(name: str, device: str | torch.device) -> torch.device:
    """The torch device, or AuditError (one line) when CUDA is asked for but missing."""
    if str(device) == "cpu":
        return torch.device("cpu")
    if not str(device).startswith("cuda"):
        raise AuditError(f"{name}: device must be cuda, cuda:N or cpu (got {device!r})")
    if not torch.cuda.is_available():
        raise AuditError(f"the {name} trainer needs a CUDA GPU and none is available here; train on a GPU "
                         f"machine, or use --trainer mlp on the CPU")
    dev = torch.device(device)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise AuditError(f"{device} does not exist here: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


# ----- the data on the device ----------------------------------------------------------
def _digest(x: np.ndarray) -> str:
    """A content hash of an array (shape, dtype and bytes)."""
    a = np.ascontiguousarray(x)
    h = hashlib.blake2b(str((a.shape, a.dtype.str)).encode(), digest_size=16)
    h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def pixel_range_constants(x: np.ndarray, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel normalisation constants from the pixel range, not from the data: the middle of
    the range and a quarter of its width (uint8: 127.5 and 63.75). Float images use [0, 1] when
    they lie in it, else [0, 255]."""
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = 0.0, (1.0 if float(np.nanmax(x)) <= 1.0 else 255.0) if x.size else 1.0
    mean = torch.full((channels,), (lo + hi) / 2, dtype=torch.float64)
    std = torch.full((channels,), (hi - lo) / 4, dtype=torch.float64)
    return mean, std


class _Resident:
    """A dataset's training images on the device (NHWC, padded by ``pad`` with the channel
    means) and the per-channel mean and 1/std used to normalise every input."""

    def __init__(self, x: np.ndarray, device: torch.device, pad: int) -> None:
        self.source = x  # held so the cache key (identity) stays valid
        self.digest = _digest(x)
        self.h, self.w, self.c = (int(s) for s in x.shape[1:])
        self.pad = pad
        host = torch.from_numpy(np.ascontiguousarray(x))
        mean, std = pixel_range_constants(x, self.c)  # fixed: no model's inputs depend on examples it did not see
        self.mean = mean.float().to(device)
        self.inv_std = (1.0 / std).float().to(device)
        if pad:
            fill = mean.round() if not torch.is_floating_point(host) else mean
            padded = torch.empty((len(x), self.h + 2 * pad, self.w + 2 * pad, self.c), dtype=host.dtype, device=device)
            padded[:] = fill.to(host.dtype).to(device)
            for start in range(0, len(x), 4096):
                padded[start:start + 4096, pad:pad + self.h, pad:pad + self.w] = host[start:start + 4096].to(device)
            self.x = padded
        else:
            self.x = host.to(device)


def _normalise(xb: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """NHWC images -> normalised float NCHW (channels_last memory when asked)."""
    out = ((xb.float() - mean) * inv_std).permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


def augment_batch(x: torch.Tensor, idx: torch.Tensor, aug: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flip + translate as one gather from the padded resident images ``x`` ``[N, h+2p, w+2p, C]``.

    ``aug`` rows are (flip, dy, dx, cutout_y, cutout_x) per example; the crop starts at row
    ``dy`` and column ``dx`` of the padded image (``dy = dx = p`` is no shift), and a flipped
    example reads its crop's columns right to left. Returns ``[B, h, w, C]`` in ``x``'s dtype.
    """
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    flip, dy, dx = aug[0], aug[1], aug[2]
    rows = dy[:, None] + ar_h[None, :]
    cols = torch.where(flip[:, None] > 0, w - 1 - ar_w[None, :], ar_w[None, :]) + dx[:, None]
    return x[idx[:, None, None], rows[:, :, None], cols[:, None, :]]


def cutout_keep(aug: torch.Tensor, h: int, w: int, size: int) -> torch.Tensor:
    """Bool ``[B, h, w]``: False inside each example's ``size`` x ``size`` square at
    (``aug[3]``, ``aug[4]``). Zeroing a normalised image there fills it with the mean."""
    ar_h = torch.arange(h, device=aug.device)
    ar_w = torch.arange(w, device=aug.device)
    cy, cx = aug[3], aug[4]
    in_r = (ar_h[None, :] >= cy[:, None]) & (ar_h[None, :] < cy[:, None] + size)
    in_c = (ar_w[None, :] >= cx[:, None]) & (ar_w[None, :] < cx[:, None] + size)
    return ~(in_r[:, :, None] & in_c[:, None, :])


def draw_epoch_plan(subset: torch.Tensor, gen: torch.Generator, pad: int, h: int, w: int, cutout: int,
                    augment: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One epoch's example order and per-example augmentation, drawn from the model's own
    generator (CPU): order ``[n]`` (a permutation of ``subset``) and ``aug`` int64 ``[5, n]``
    (flip in {0,1}, dy and dx in 0..2*pad, cutout corner in 0..h-cutout, 0..w-cutout) or None."""
    n = len(subset)
    order = subset[torch.randperm(n, generator=gen)]
    if not augment:
        return order, None
    aug = torch.zeros((5, n), dtype=torch.int64)
    aug[0] = (torch.rand(n, generator=gen) < 0.5).long()
    if pad:
        aug[1:3] = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    if cutout:
        aug[3] = torch.randint(0, h - cutout + 1, (n,), generator=gen)
        aug[4] = torch.randint(0, w - cutout + 1, (n,), generator=gen)
    return order, aug


def _train_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                aug: torch.Tensor | None, h: int, w: int, cutout: int, mean: torch.Tensor, inv_std: torch.Tensor,
                label_smoothing: float, bf16: bool, channels_last: bool) -> torch.Tensor:
    """One training batch's loss: gather with flip + translate, normalise, cut out, forward,
    label-smoothed cross-entropy (compiled as one function on CUDA)."""
    xb = x[idx] if aug is None else augment_batch(x, idx, aug, h, w)
    xf = _normalise(xb, mean, inv_std, channels_last)
    if aug is not None and cutout > 0:
        xf = xf * cutout_keep(aug, h, w, cutout)[:, None, :, :].to(xf.dtype)
    if bf16:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            out = model(xf)
    else:
        out = model(xf)
    return torch.nn.functional.cross_entropy(out.float(), y[idx], label_smoothing=label_smoothing)


_COMPILED: dict[str, Callable] = {}


def _compiled_loss() -> Callable:
    """``torch.compile(_train_loss)``, built once per process and shared by all models."""
    if "loss" not in _COMPILED:
        _COMPILED["loss"] = torch.compile(_train_loss, dynamic=False)
    return _COMPILED["loss"]


# ----- models being trained ---------------------------------------------------------
def sgd_step_(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor], lr: torch.Tensor,
          momentum: float, weight_decay: float) -> None:
    """SGD in place, as torch.optim.SGD without dampening or Nesterov (zero-initialised
    momentum buffers make the first step's buffer the gradient). ``lr`` is a 0-d tensor, so
    a captured CUDA graph reads each step's value."""
    if weight_decay:
        torch._foreach_add_(grads, params, alpha=weight_decay)
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    torch._foreach_sub_(params, torch._foreach_mul(bufs, lr))


class _Job:
    """One model to train: its initial weights, data-order generator, subset and labels."""

    def __init__(self, trainer: "GPUTrainer", n_classes: int, in_channels: int, mask: np.ndarray, seed: int,
                 labels: np.ndarray) -> None:
        init_seed, data_seed = (int(v) for v in np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = _build_model(trainer.name, n_classes, width=trainer.cfg.width, in_channels=in_channels)
        self.init_state = list(model.state_dict().values())
        self.gen = torch.Generator().manual_seed(data_seed)
        self.subset = torch.from_numpy(np.flatnonzero(mask))
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64))
        self.steps_per_epoch = max(1, len(self.subset) // trainer.cfg.batch_size)  # drop_last, as the paper


class _Slot:
    """A network on the device, its momentum, static step inputs and (on CUDA) its own stream
    and captured CUDA graph of one full training step. Models train one after another in a
    slot: loading a model copies its initial weights into the slot's tensors, so the graph,
    recorded once, serves every model."""

    def __init__(self, trainer: "GPUTrainer", data: _Resident, n_classes: int, n_train: int, loss_fn: Callable,
                 bf16: bool) -> None:
        cfg, device = trainer.cfg, trainer.device
        self.name, self.cfg, self.data, self.device = trainer.name, cfg, data, device
        self.n_classes, self.loss_fn, self.bf16 = n_classes, loss_fn, bf16
        model = _build_model(trainer.name, n_classes, width=cfg.width, in_channels=data.c).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.train()
        self.state = list(model.state_dict().values())  # aliases of the parameters and buffers
        self.params = list(model.parameters())
        self.bufs = [torch.zeros_like(p) for p in self.params]
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        self.y = torch.zeros(n_train, dtype=torch.int64, device=device)
        self.idx = torch.zeros(cfg.batch_size, dtype=torch.int64, device=device)
        self.aug = torch.zeros((5, cfg.batch_size), dtype=torch.int64, device=device) if cfg.augment != "none" else None
        use_cutout = cfg.augment == "flip_translate_cutout"
        self.cutout = min(cfg.cutout, data.h, data.w) if use_cutout else 0
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.plan_idx: torch.Tensor | None = None
        self.plan_aug: torch.Tensor | None = None

    def context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _body(self, idx: torch.Tensor, aug: torch.Tensor | None) -> None:
        cfg, data = self.cfg, self.data
        loss = self.loss_fn(self.model, data.x, self.y, idx, aug, data.h, data.w, self.cutout, data.mean,
                            data.inv_std, cfg.label_smoothing, self.bf16, cfg.channels_last)
        loss.backward()
        with torch.no_grad():
            sgd_step_(self.params, [p.grad for p in self.params], self.bufs, self.lr, cfg.momentum, cfg.weight_decay)

    def _eager_step(self, idx: torch.Tensor, aug: torch.Tensor | None) -> None:
        for p in self.params:
            p.grad = None
        self._body(idx, aug)

    def capture(self) -> None:
        """Warm up on the slot's stream, then record one full-batch step as a CUDA graph."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with self.context():
            for _ in range(3):
                self._eager_step(self.idx, self.aug)
        self.stream.synchronize()
        for p in self.params:
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._body(self.idx, self.aug)
        self.graph = graph

    def load(self, job: _Job) -> None:
        """Start training ``job``'s model: its initial weights, zero momentum, its labels."""
        with self.context():
            for dst, src in zip(self.state, job.init_state):
                dst.copy_(src)
            for b in self.bufs:
                b.zero_()
            self.y.copy_(job.labels)

    def start_epoch(self, job: _Job) -> None:
        """Draw this epoch's order and augmentation from the model's own generator (on the CPU)."""
        order, aug = draw_epoch_plan(job.subset, job.gen, self.data.pad, self.data.h, self.data.w, self.cutout,
                                     augment=self.aug is not None)
        with self.context():
            self.plan_idx = order.to(self.device)
            self.plan_aug = aug.to(self.device) if aug is not None else None

    def step(self, step: int, lr: float) -> None:
        """SGD step ``step`` of the current epoch (no host synchronisation)."""
        bs = self.cfg.batch_size
        sl = slice(step * bs, (step + 1) * bs)
        with self.context():
            self.lr.fill_(lr)
            idx = self.plan_idx[sl]
            aug = self.plan_aug[:, sl] if self.plan_aug is not None else None
            if self.graph is not None and len(idx) == bs:
                self.idx.copy_(idx)
                if aug is not None:
                    self.aug.copy_(aug)
                self.graph.replay()
            else:
                self._eager_step(idx, aug)

    def export(self) -> torch.nn.Module:
        """A copy of the slot's network in eval mode (call after the slot's stream is joined)."""
        with torch.device("meta"):
            model = _build_model(self.name, self.n_classes, width=self.cfg.width, in_channels=self.data.c)
        model = model.to_empty(device=self.device)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.load_state_dict(self.model.state_dict())
        return model.eval()


# ----- trained models ------------------------------------------------------------------
def tta_logits(model: torch.nn.Module, xf: torch.Tensor, tta: bool = True) -> torch.Tensor:
    """Float logits of normalised NCHW inputs; with ``tta`` the mean over each image and its
    horizontal mirror (the width axis). The paper's code averages with ``torch.fliplr(ims)``,
    which on NCHW batches reverses the channel axis (RGB -> BGR), not the image; we use the
    mirror that flip TTA means."""
    if not tta:
        return model(xf).float()
    return (model(xf).float() + model(xf.flip(3)).float()) * 0.5


class TrainedResNets:
    """A block of trained networks on the device; ``logits`` use flip test-time augmentation."""

    def __init__(self, models: list[torch.nn.Module], mean: torch.Tensor, inv_std: torch.Tensor,
                 device: torch.device, cfg: GPUConfig) -> None:
        self.models = models
        self.mean, self.inv_std, self.device, self.cfg = mean, inv_std, device, cfg
        self.n_models = len(models)

    @no_grad
    def _run(self, x: np.ndarray, features: bool) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4:
            raise AuditError(f"the GPU trainers' models take images [N, H, W, C]; got an array of shape {x.shape}")
        cfg = self.cfg
        bf16 = self.device.type == "cuda" and cfg.precision == "bf16"
        out: torch.Tensor | None = None
        for start in range(0, len(x), cfg.eval_batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[start:start + cfg.eval_batch])).to(self.device)
            xf = _normalise(xb, self.mean, self.inv_std, cfg.channels_last)
            for b, model in enumerate(self.models):
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                    res = model.features(xf).float() if features else tta_logits(model, xf, cfg.tta)
                if out is None:
                    out = torch.empty((self.n_models, len(x), res.shape[1]), dtype=torch.float32, device=self.device)
                out[b, start:start + len(xb)] = res
        if out is None:
            return np.zeros((self.n_models, 0, 0), dtype=np.float32)
        return out.cpu().numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[n_models, N, n_classes]``, averaged over the image and its mirror (when tta)."""
        return self._run(x, features=False)

    def features(self, x: np.ndarray) -> np.ndarray:
        """Penultimate features ``[n_models, N, F]`` (no test-time augmentation)."""
        return self._run(x, features=True)


# ----- the trainer ---------------------------------------------------------------------
class GPUTrainer:
    """Trains blocks of ResNets, ``concurrent`` at a time on separate CUDA streams."""

    default_block_size = 64
    gpus_per_task = 1.0  # the Ray engine gives each block's task one GPU

    def __init__(self, name: str, cfg: GPUConfig, device: str | torch.device = "cuda") -> None:
        """``device`` cpu runs the same logic eagerly in fp32 (tests); the public path is
        ``make_gpu_trainer``, which insists on CUDA."""
        if name not in RECIPES:
            raise AuditError(f"unknown GPU trainer '{name}': use resnet9 or resnet18")
        _check(name, cfg)
        self.name, self.cfg = name, cfg
        self.default_block_size = DEFAULT_BLOCK_SIZE[name]
        self.device = _require_device(name, device)
        self._resident: _Resident | None = None
        self._slots: tuple | None = None

    def config(self) -> dict:
        """Every setting that determines the models (not the device), for run.json."""
        return {"name": self.name, **asdict(self.cfg)}

    def _data(self, dataset: Dataset) -> _Resident:
        """The training images on the device, uploaded once and kept while the same images
        come back (the same array, or equal contents: a Ray worker gets a new copy per task)."""
        pad = self.cfg.translate if self.cfg.augment in ("flip_translate_cutout", "flip_translate") else 0
        cached = self._resident
        if cached is not None and cached.pad == pad and (
                cached.source is dataset.x_train or cached.digest == _digest(dataset.x_train)):
            cached.source = dataset.x_train
            return cached
        self._resident = self._slots = None  # free the old copy before uploading the new one
        self._resident = _Resident(dataset.x_train, self.device, pad)
        return self._resident

    def _check_inputs(self, dataset: Dataset, masks: np.ndarray, seeds: Sequence[int],
                      labels: np.ndarray | None) -> np.ndarray:
        if not dataset.is_image:
            raise AuditError(f"the {self.name} trainer needs images [N, H, W, C]; {dataset.spec} holds features "
                             f"of shape {dataset.x_train.shape[1:]}: use --trainer mlp")
        h, w = dataset.x_train.shape[1:3]
        if self.name == "resnet9" and min(h, w) < 12:
            raise AuditError(f"resnet9 needs images of at least 12x12 pixels; {dataset.spec} has {h}x{w}")
        if masks.ndim != 2 or masks.shape[1] != dataset.n_train or len(masks) != len(seeds):
            raise AuditError(f"masks of shape {masks.shape} do not match {len(seeds)} seeds and "
                             f"{dataset.n_train} training examples")
        if (masks.sum(1) == 0).any():
            raise AuditError("a model's subset is empty; raise alpha")
        if labels is None:
            return np.broadcast_to(dataset.y_train, masks.shape)
        labels = np.asarray(labels)
        if labels.shape != masks.shape:
            raise AuditError(f"labels of shape {labels.shape} do not match masks of shape {masks.shape}")
        if labels.min() < 0 or labels.max() >= dataset.n_classes:
            raise AuditError(f"labels must lie in 0..{dataset.n_classes - 1}")
        return labels

    def _get_slots(self, data: _Resident, n_classes: int, n_train: int, k: int, bf16: bool) -> list[_Slot]:
        """``k`` slots for this data (kept across blocks, with their CUDA graphs)."""
        key = (id(data), n_classes, n_train, k)
        if self._slots is None or self._slots[0] != key:
            self._slots = None
            loss_fn = _compiled_loss() if (self.device.type == "cuda" and self.cfg.compile) else _train_loss
            slots = [_Slot(self, data, n_classes, n_train, loss_fn, bf16) for _ in range(k)]
            if self.device.type == "cuda" and self.cfg.cuda_graphs:
                for slot in slots:
                    slot.capture()
            self._slots = (key, slots)
        return self._slots[1]

    def train_block(self, dataset: Dataset, masks: np.ndarray, seeds: Sequence[int],
                    labels: np.ndarray | None = None, progress: Progress = SILENT) -> TrainedResNets:
        """Train ``len(seeds)`` models, ``concurrent`` at a time; returns them ready to evaluate."""
        masks = np.asarray(masks, dtype=bool)
        labels = self._check_inputs(dataset, masks, seeds, labels)
        cfg, device = self.cfg, self.device
        cuda = device.type == "cuda"
        bf16 = cuda and cfg.precision == "bf16"
        old_benchmark = torch.backends.cudnn.benchmark
        models: list[torch.nn.Module] = []
        try:
            if cuda:
                torch.backends.cudnn.benchmark = True
            data = self._data(dataset)
            k = min(cfg.concurrent, len(seeds))
            slots = self._get_slots(data, dataset.n_classes, dataset.n_train, cfg.concurrent, bf16)[:k]
            with progress.task(f"training {self.name} block", total=len(seeds) * cfg.epochs, unit="model-epochs") as bar:
                for start in range(0, len(seeds), k):
                    group = range(start, min(start + k, len(seeds)))
                    jobs = [_Job(self, dataset.n_classes, data.c, masks[i], int(seeds[i]), labels[i]) for i in group]
                    models += self._train_group(slots[:len(jobs)], jobs, bar)
        except torch.cuda.OutOfMemoryError:
            self._slots = None
            raise AuditError(f"out of GPU memory training {cfg.concurrent} {self.name} models at once; "
                             f"lower -o concurrent=N or -o batch_size=N") from None
        finally:
            torch.backends.cudnn.benchmark = old_benchmark
        return TrainedResNets(models, data.mean, data.inv_std, device, cfg)

    def _train_group(self, slots: list[_Slot], jobs: list[_Job], bar) -> list[torch.nn.Module]:
        cfg = self.cfg
        main = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        for slot, job in zip(slots, jobs):
            if slot.stream is not None:
                slot.stream.wait_stream(main)
            slot.load(job)
        for epoch in range(cfg.epochs):
            for slot, job in zip(slots, jobs):
                slot.start_epoch(job)
            for step in range(max(job.steps_per_epoch for job in jobs)):
                for slot, job in zip(slots, jobs):
                    spe = job.steps_per_epoch
                    if step < spe:
                        slot.step(step, cfg.lr * lr_factor(epoch * spe + step, spe, cfg))
            bar.advance(len(jobs))
        out = []
        for slot in slots:
            if slot.stream is not None:
                main.wait_stream(slot.stream)
            out.append(slot.export())
        return out


def lr_factor(t: int, steps_per_epoch: int, cfg: GPUConfig) -> float:
    """Triangular lr factor: 0 at step 0, 1 at the peak epoch, 0 at the end (as in the paper's code)."""
    peak, end = cfg.peak_epoch * steps_per_epoch, cfg.epochs * steps_per_epoch
    if t <= peak:
        return t / peak if peak > 0 else 1.0
    return max(0.0, (end - t) / (end - peak)) if end > peak else 0.0


def steps_per_model(n_train: int, alpha: float, cfg: GPUConfig) -> int:
    """SGD steps one model takes (for throughput arithmetic)."""
    return cfg.epochs * max(1, int(math.floor(alpha * n_train)) // cfg.batch_size)
