"""The GPU trainers' logic, run on the CPU (tiny widths): the public path insists on CUDA."""

import numpy as np
import pytest
import torch

from audit.errors import AuditError
from audit.training import gpu as G
from audit.training.base import correct_class_margins
from audit.training.registry import trainer_config, trainer_from_config
from audit.training.resnets import build_model
from tests.conftest import FIXTURES, assert_one_line_error, run_cli

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
TINY = dict(width=4, epochs=3, batch_size=8, lr=0.2, concurrent=2, channels_last=False, eval_batch=16)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def cifar():
    from audit.data import load_dataset

    return load_dataset(f"cifar10:{FIXTURES / 'cifar10'}")


def cpu_trainer(name="resnet9", **options):
    return G.GPUTrainer(name, G.gpu_config(name, **{**TINY, **options}), device="cpu")


def half_masks(n_models, n, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_models, n), dtype=bool)
    for m in masks:
        m[rng.choice(n, n // 2, replace=False)] = True
    return masks


# ----- configuration and the CUDA requirement ----------------------------------------
def test_paper_recipes_follow_the_paper():
    r9 = G.gpu_config("resnet9", recipe="paper")
    assert (r9.epochs, r9.batch_size, r9.lr, r9.peak_epoch, r9.momentum, r9.weight_decay) == (24, 512, 0.5, 5, 0.9,
                                                                                             5e-4)
    assert r9.augment == "flip_translate_cutout" and r9.tta
    r18 = G.gpu_config("resnet18", recipe="paper")
    assert (r18.epochs, r18.batch_size, r18.lr, r18.peak_epoch, r18.augment) == (15, 512, 0.4, 6, "none")
    for name in ("resnet9", "resnet18"):
        default = G.gpu_config(name)
        assert default.precision == "bf16" and default.channels_last and default.compile


def test_changing_epochs_keeps_the_schedule_shape():
    cfg = G.gpu_config("resnet9", recipe="paper", epochs=12)
    assert cfg.peak_epoch == pytest.approx(2.5)
    assert G.gpu_config("resnet9", epochs=12, peak_epoch=1).peak_epoch == 1


@pytest.mark.parametrize("options", [dict(epochs=0), dict(batch_size=2.5), dict(recipe="nope"), dict(colour=1),
                                     dict(augment="mixup"), dict(precision="fp8"), dict(peak_epoch=99),
                                     dict(tta=1), dict(momentum=1.0)])
def test_bad_options_are_one_line_errors(options):
    with pytest.raises(AuditError):
        G.gpu_config("resnet9", **options)


@no_cuda
def test_without_cuda_the_public_factory_fails_fast():
    with pytest.raises(AuditError, match="CUDA"):
        G.make_gpu_trainer("resnet9")
    with pytest.raises(AuditError, match="CUDA"):
        G.make_gpu_trainer("resnet18", device="cpu")  # the CPU path is not public
    with pytest.raises(AuditError, match="CUDA"):
        trainer_from_config(trainer_config("resnet9"))


def test_trainer_config_needs_no_gpu_and_leaves_the_device_out():
    from audit.training.registry import default_block_size

    assert default_block_size("resnet9") == cpu_trainer().default_block_size
    assert default_block_size("resnet18") == cpu_trainer("resnet18").default_block_size
    cfg = trainer_config("resnet9", epochs=4)
    assert cfg["name"] == "resnet9" and cfg["epochs"] == 4 and "device" not in cfg
    assert cpu_trainer().config() == {"name": "resnet9", **{k: v for k, v in trainer_config(
        "resnet9", **TINY).items() if k != "name"}}


@no_cuda
@pytest.mark.parametrize("args,trainer", [  # the default GPU trainer per dataset, or the one asked for
    (("cifar10:{cifar}",), "resnet9"), (("fmow:{fmow}",), "resnet18"), (("cifar10:{cifar}", "-o", "device=cpu"), "resnet9"),
    (("cifar10:{cifar}", "--trainer", "resnet9"), "resnet9"), (("digits", "--trainer", "resnet18"), "resnet18")])
def test_cli_without_cuda_is_one_line_and_writes_nothing(tmp_path, args, trainer):
    args = [a.format(cifar=FIXTURES / "cifar10", fmow=FIXTURES / "fmow") for a in args]
    run = tmp_path / "run"
    proc = run_cli("train", *args, "--run", str(run), "-m", "4")
    assert_one_line_error(proc)
    assert "CUDA" in proc.stderr and trainer in proc.stderr
    assert not run.exists()


# ----- the step functions ------------------------------------------------------------
def test_lr_factor_is_the_papers_triangle():
    cfg = G.gpu_config("resnet9", recipe="paper")
    spe = 48
    t = np.arange(cfg.epochs * spe + 1)
    ours = np.array([G.lr_factor(int(i), spe, cfg) for i in t])
    ref = np.interp(t, [0, cfg.peak_epoch * spe, cfg.epochs * spe], [0, 1, 0])  # FFCV's CIFAR example
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_sgd_step_equals_torch_sgd():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
    ref = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.SGD(ref, lr=0.1, momentum=0.9, weight_decay=5e-4)
    bufs = [torch.zeros_like(p) for p in params]
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        lr = 0.1 * (step + 1) / 4
        for g in opt.param_groups:
            g["lr"] = lr
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        G.sgd_step_(params, [g.clone() for g in grads], bufs, torch.tensor(lr), 0.9, 5e-4)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r.detach(), rtol=1e-6, atol=1e-7)


def _resident(rng, pad, n=6, h=9, w=7):
    x = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    return x, G._Resident(x, torch.device("cpu"), pad)


def test_resident_padding_is_the_channel_mean(rng):
    """Normalisation constants come from the pixel range (uint8: 127.5, 63.75), never from the data,
    so no model's inputs depend on training examples outside its subset; padding is that mean."""
    x, data = _resident(rng, pad=2)
    assert data.x.shape == (6, 13, 11, 3)
    fill = np.round(np.full(3, 127.5))
    assert (data.x[:, :2].numpy() == fill).all() and (data.x[:, :, -2:].numpy() == fill).all()
    np.testing.assert_array_equal(data.x[:, 2:-2, 2:-2].numpy(), x)
    np.testing.assert_allclose(data.mean.numpy(), np.full(3, 127.5), rtol=1e-6)
    np.testing.assert_allclose(1 / data.inv_std.numpy(), np.full(3, 63.75), rtol=1e-6)
    other = G._Resident(x[::-1].copy() // 2, torch.device("cpu"), 2)  # other images: the same constants
    np.testing.assert_array_equal(other.mean.numpy(), data.mean.numpy())


def test_augment_batch_is_flip_then_translate(rng):
    pad = 2
    x, data = _resident(rng, pad)
    padded = data.x.numpy()
    n, h, w = 6, 9, 7
    idx = torch.tensor([4, 0, 4, 2, 5, 1])
    flip = torch.tensor([0, 1, 1, 0, 1, 0])
    dy = torch.tensor([pad, pad, 0, 4, 3, 1])
    dx = torch.tensor([pad, pad, 4, 0, 1, 3])
    aug = torch.stack([flip, dy, dx, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
    out = G.augment_batch(data.x, idx, aug, h, w).numpy()
    assert out.shape == (6, h, w, 3)
    np.testing.assert_array_equal(out[0], x[4])                 # no flip, no shift
    np.testing.assert_array_equal(out[1], x[0][:, ::-1])        # a mirror image
    for b in range(n):                                          # a (mirrored) crop of the padded image
        crop = padded[idx[b], dy[b]:dy[b] + h, dx[b]:dx[b] + w]
        np.testing.assert_array_equal(out[b], crop[:, ::-1] if flip[b] else crop)


def test_cutout_masks_one_square_per_example():
    aug = torch.zeros((5, 3), dtype=torch.long)
    aug[3] = torch.tensor([0, 5, 2])
    aug[4] = torch.tensor([0, 3, 6])
    keep = G.cutout_keep(aug, 9, 10, 4).numpy()
    assert ((~keep).sum(axis=(1, 2)) == 16).all()
    for b in range(3):
        cy, cx = int(aug[3, b]), int(aug[4, b])
        assert not keep[b, cy:cy + 4, cx:cx + 4].any()


def test_epoch_plans_are_seeded_by_the_model_and_stay_in_range():
    subset = torch.tensor([3, 8, 9, 14, 20, 21, 30])
    plans = [G.draw_epoch_plan(subset, torch.Generator().manual_seed(s), 2, 32, 32, 4, augment=True)
             for s in (5, 5, 6)]
    (o1, a1), (o2, a2), (o3, a3) = plans
    assert torch.equal(o1, o2) and torch.equal(a1, a2)
    assert not (torch.equal(o1, o3) and torch.equal(a1, a3))
    assert sorted(o1.tolist()) == subset.tolist()
    assert set(a1[0].tolist()) <= {0, 1} and 0 <= a1[1:3].min() and a1[1:3].max() <= 4
    assert 0 <= a1[3:].min() and a1[3:].max() <= 28
    order, aug = G.draw_epoch_plan(subset, torch.Generator().manual_seed(5), 0, 32, 32, 0, augment=False)
    assert aug is None and torch.equal(order, o1)  # the same order with or without augmentation


def test_tta_logits_average_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = build_model("resnet9", 10, width=4).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tta = G.tta_logits(model, x)
        torch.testing.assert_close(tta, (model(x) + model(torch.flip(x, dims=[3]))) / 2)
        torch.testing.assert_close(G.tta_logits(model, x, tta=False), model(x))
        torch.testing.assert_close(G.tta_logits(model, torch.flip(x, dims=[3])), tta, rtol=1e-5, atol=1e-6)


# ----- whole blocks on the CPU ----------------------------------------------------------
def test_block_shapes_and_margins_on_every_target(cifar):
    trainer = cpu_trainer()
    models = trainer.train_block(cifar, half_masks(3, cifar.n_train), [1, 2, 3])
    logits = models.logits(cifar.targets_x())
    assert logits.shape == (3, cifar.n_train + cifar.n_test, 10) and np.isfinite(logits).all()
    assert models.features(cifar.x_test).shape == (3, cifar.n_test, 8)
    margins = correct_class_margins(logits, cifar.targets_y())
    assert margins.shape == (3, cifar.n_train + cifar.n_test) and np.isfinite(margins).all()


def test_logits_are_flip_tta_of_the_trained_networks(cifar):
    trainer = cpu_trainer(epochs=1)
    models = trainer.train_block(cifar, half_masks(1, cifar.n_train), [9])
    xf = G._normalise(torch.from_numpy(cifar.x_test), models.mean, models.inv_std, False)
    with torch.no_grad():
        net = models.models[0]
        expected = ((net(xf) + net(xf.flip(3))) / 2).numpy()
    np.testing.assert_allclose(models.logits(cifar.x_test)[0], expected, rtol=1e-5, atol=1e-5)


def test_same_seeds_same_models_alone_or_in_a_block(cifar):
    masks = half_masks(3, cifar.n_train, seed=1)
    first = cpu_trainer().train_block(cifar, masks, [7, 8, 9]).logits(cifar.x_test)
    again = cpu_trainer().train_block(cifar, masks, [7, 8, 9]).logits(cifar.x_test)
    alone = cpu_trainer(concurrent=1).train_block(cifar, masks[2:], [9]).logits(cifar.x_test)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[2], alone[0])
    assert not np.allclose(first[0], first[1])  # other seeds and subsets, other models
    other_seed = cpu_trainer().train_block(cifar, masks[:1], [70]).logits(cifar.x_test)
    assert not np.allclose(first[0], other_seed[0])


def test_labels_override_changes_the_model(cifar):
    masks = half_masks(1, cifar.n_train, seed=2)
    labels = cifar.y_train[None].copy()
    labels[0, masks[0]] = (labels[0, masks[0]] + 1) % cifar.n_classes
    trainer = cpu_trainer()
    plain = trainer.train_block(cifar, masks, [4]).logits(cifar.x_test)
    relabelled = trainer.train_block(cifar, masks, [4], labels=labels).logits(cifar.x_test)
    assert not np.allclose(plain, relabelled)


def test_resnet18_trains_without_augmentation(cifar):
    trainer = cpu_trainer("resnet18", epochs=1)
    assert trainer.cfg.augment == "none"
    logits = trainer.train_block(cifar, half_masks(2, cifar.n_train), [1, 2]).logits(cifar.x_test)
    assert logits.shape == (2, cifar.n_test, 10) and np.isfinite(logits).all()


def test_the_network_learns_the_fixture(cifar):
    # every training image, 15 epochs: the fixture's classes (colour + stripes) are easy
    trainer = cpu_trainer(width=8, epochs=15, batch_size=10, lr=0.1, concurrent=1)
    logits = trainer.train_block(cifar, np.ones((1, cifar.n_train), dtype=bool), [0]).logits(cifar.x_train)
    accuracy = (logits[0].argmax(1) == cifar.y_train).mean()
    assert accuracy >= 0.8, accuracy


def test_bad_inputs_are_audit_errors(cifar, digits):
    trainer = cpu_trainer()
    with pytest.raises(AuditError, match="images"):
        trainer.train_block(digits.__class__(spec="feat", x_train=np.zeros((4, 5), np.float32),
                                             y_train=np.zeros(4, np.int64), x_test=np.zeros((2, 5), np.float32),
                                             y_test=np.zeros(2, np.int64), classes=("a",)),
                            np.ones((1, 4), bool), [0])
    with pytest.raises(AuditError, match="12x12"):
        trainer.train_block(digits, half_masks(1, digits.n_train), [0])
    with pytest.raises(AuditError, match="empty"):
        trainer.train_block(cifar, np.zeros((1, cifar.n_train), bool), [0])
    with pytest.raises(AuditError, match="labels"):
        trainer.train_block(cifar, half_masks(1, cifar.n_train), [0], labels=np.full((1, cifar.n_train), 10))


def test_resumed_store_equals_uninterrupted(tmp_path, cifar):
    from audit.store import RunConfig, RunStore
    from audit.execution import train_local

    trainer = cpu_trainer(epochs=1, concurrent=2)

    def make(path):
        cfg = RunConfig(dataset="cifar10", fingerprint=cifar.fingerprint(), n_train=cifar.n_train,
                        n_test=cifar.n_test, alpha=0.5, n_models=6, block_size=2, trainer=trainer.config())
        return RunStore.create(path, cfg)

    ref = make(tmp_path / "ref")
    assert train_local(ref, cifar, trainer) == 6
    cut = make(tmp_path / "cut")
    assert train_local(cut, cifar, trainer, max_blocks=1) == 2
    cut = RunStore.open(tmp_path / "cut")
    assert train_local(cut, cifar, cpu_trainer(epochs=1, concurrent=2)) == 4  # a fresh trainer resumes
    for name in ("masks", "margins", "done"):
        np.testing.assert_array_equal(np.asarray(getattr(ref, name)), np.asarray(getattr(cut, name)))
    assert np.asarray(cut.done).all() and np.isfinite(np.asarray(cut.margins)).all()


def test_resident_data_is_kept_for_equal_images(cifar):
    trainer = cpu_trainer(epochs=1)
    trainer.train_block(cifar, half_masks(1, cifar.n_train), [0])
    first = trainer._resident
    copy = cifar.__class__(spec=cifar.spec, x_train=cifar.x_train.copy(), y_train=cifar.y_train,
                           x_test=cifar.x_test, y_test=cifar.y_test, classes=cifar.classes)
    trainer.train_block(copy, half_masks(1, cifar.n_train), [0])
    assert trainer._resident is first  # a Ray worker's fresh copy of the same images: no re-upload
    changed = copy.x_train.copy()
    changed[0, 0, 0, 0] ^= 1
    other = cifar.__class__(spec=cifar.spec, x_train=changed, y_train=cifar.y_train, x_test=cifar.x_test,
                            y_test=cifar.y_test, classes=cifar.classes)
    trainer.train_block(other, half_masks(1, cifar.n_train), [0])
    assert trainer._resident is not first


@pytest.mark.slow
def test_compiled_loss_equals_eager_and_is_shared_by_all_models():
    # the CUDA path compiles _train_loss once and calls it with every slot's network:
    # one graph must serve them all (no recompiles), with the eager function's values
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 36, 36, 3), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    mean, inv_std = torch.full((3,), 120.0), torch.full((3,), 1 / 60)
    loss_fn = torch.compile(G._train_loss, dynamic=False)
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model("resnet9", 10, width=4).train()
        idx = torch.randint(0, 32, (8,), generator=gen)
        aug = torch.stack([torch.randint(0, 2, (8,), generator=gen), torch.randint(0, 5, (8,), generator=gen),
                           torch.randint(0, 5, (8,), generator=gen), torch.randint(0, 29, (8,), generator=gen),
                           torch.randint(0, 29, (8,), generator=gen)])
        args = (x, y, idx, aug, 32, 32, 4, mean, inv_std, 0.1, False, True)
        compiled = loss_fn(model, *args)
        compiled.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        eager = G._train_loss(model, *args)
        eager.backward()
        torch.testing.assert_close(compiled.detach(), eager.detach(), rtol=1e-4, atol=1e-5)
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-3, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
