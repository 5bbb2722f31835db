"""Planted duplicates and planted label errors as dataset options: known answers for the audits.

``load_dataset(spec, plant=N, plant_seed=S, plant_noise=f, plant_shift=None)`` appends
slightly perturbed copies of N test images (chosen with ``plant_seed``) to the training
set: gaussian noise of ``f`` × each pixel's spread, and a one-pixel shift for images of
at least 16×16 (``plant_shift`` None = that rule; True/False forces it). The planting
is deterministic, so a run created with these ``dataset_options`` reloads exactly the
same data (same fingerprint). The copies are recorded in ``meta["planted_test_of_train"]``
(one value per training example: the test index it copies, -1 for an original training
example); other ``<name>_train`` metadata with a
matching ``<name>_test`` array (FMoW lat/lon) gets the test image's value.

``plant_families="noise,shift,brightness,crop,flip,jpeg"`` instead perturbs each copy by one
family of what a real near-duplicate shows (assigned in turn over a seeded order, recorded in
``meta["planted_family_of_train"]`` as an index into ``PLANT_FAMILIES``): additive noise, a
one-pixel shift, a brightness/contrast change, a small crop resized back, a horizontal flip
(only where a flipped image keeps its class: :func:`default_families`), JPEG re-encoding.

``load_dataset(spec, plant_labels=f, plant_labels_seed=S)`` flips a seeded fraction ``f``
of the training labels to another class (uniformly), for the label-error finding
(audit.audits.label_errors); the flipped examples and their original classes are recorded
in ``meta["planted_label_of_train"]`` (-1 for an untouched example).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from audit.data.dataset import Dataset
from audit.data.moves import ONE_PIXEL_MOVES, shift_images
from audit.errors import AuditError

PLANT_OPTIONS = ("plant", "plant_seed", "plant_noise", "plant_shift", "plant_families")
PLANTED_META = "planted_test_of_train"
PLANTED_FAMILY_META = "planted_family_of_train"  # per training example: index into PLANT_FAMILIES, -1 if no copy
PLANT_FAMILIES = ("noise", "shift", "brightness", "crop", "flip", "jpeg")
FEATURE_FAMILIES = ("noise", "brightness")  # the families that apply to feature vectors (no image structure)
FLIP_SAFE = ("cifar10", "fmow")  # datasets whose classes survive a horizontal flip (not digits or text)


def _shift_one_pixel(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift an [H, W, C] image by (dy, dx) in {-1, 0, 1}, repeating the edge."""
    return shift_images(img[None], dy, dx)[0]


MIN_SHIFT_SIDE = 16  # a one-pixel shift is "slight" only when it is at most ~6% of the image side
DEFAULT_PLANT_NOISE = 0.1


def plant_duplicates(x_train, y_train, x_test, y_test, n: int, seed: int, noise: float = DEFAULT_PLANT_NOISE,
                     shift: bool | None = None, families: tuple[str, ...] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append perturbed copies of ``n`` random test images to the training set.

    Each copy gets gaussian noise whose std is ``noise`` × that pixel's (feature's) std over
    the training set, so pixels that never vary (the empty border of a digit) stay as they
    are: a fixed noise level there would be amplified by any per-pixel standardisation and
    turn the copy into a different input for the model. ``shift``: a random shift of at
    most one pixel for [N, H, W, C] images; ``None`` (default) shifts only images with both
    sides >= 16 pixels (CIFAR, FMoW: slight; an 8x8 digit: not). Values are clipped to the
    dtype's range and the dtype is kept. The copy has the test image's label. Returns
    ``x_train_new, y_train_new, planted_pairs`` with rows ``(test_index, new_train_index)``.
    With ``families``, each copy is changed by one family instead (:func:`plant_family_copies`);
    :func:`plant_duplicates_by_family` also returns which.
    """
    x_new, y_new, pairs, _ = plant_duplicates_by_family(x_train, y_train, x_test, y_test, n, seed, noise, shift,
                                                        families)
    return x_new, y_new, pairs


def plant_duplicates_by_family(x_train, y_train, x_test, y_test, n: int, seed: int,
                               noise: float = DEFAULT_PLANT_NOISE, shift: bool | None = None,
                               families: tuple[str, ...] | None = None,
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`plant_duplicates` plus each copy's family code (None for the classic noise copies)."""
    x_tr, x_te = np.asarray(x_train), np.asarray(x_test)
    y_tr, y_te = np.asarray(y_train), np.asarray(y_test)
    if x_tr.shape[1:] != x_te.shape[1:] or len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise AuditError(f"train {x_tr.shape}/{y_tr.shape} and test {x_te.shape}/{y_te.shape} arrays do not "
                         "fit together; pass matching images and labels")
    if not 0 <= n <= len(x_te):
        raise AuditError(f"cannot plant {n} duplicates from {len(x_te)} test images; use 0 <= n <= {len(x_te)}")
    if not noise >= 0:
        raise AuditError(f"noise = {noise}; use a fraction of the per-pixel standard deviation >= 0 (e.g. 0.1)")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(x_te), size=n, replace=False)).astype(np.int64)
    codes = None
    if families is not None:
        copies, codes = plant_family_copies(x_tr, x_te, picks, families, rng, noise)
        shift = False
    else:
        copies = x_te[picks].astype(np.float64)
    if noise > 0 and n and families is None:
        sigma = noise * x_tr.astype(np.float64).std(axis=0) if len(x_tr) else np.zeros(x_te.shape[1:])
        copies = copies + rng.normal(0.0, 1.0, size=copies.shape) * sigma
    if shift is None:
        shift = copies.ndim == 4 and min(copies.shape[1:3]) >= MIN_SHIFT_SIDE
    if shift and copies.ndim == 4 and n:
        moves = rng.integers(-1, 2, size=(n, 2))
        copies = np.stack([_shift_one_pixel(img, int(dy), int(dx)) for img, (dy, dx) in zip(copies, moves)])
    if np.issubdtype(x_te.dtype, np.integer):
        info = np.iinfo(x_te.dtype)
        copies = np.clip(np.rint(copies), info.min, info.max)
    copies = copies.astype(x_te.dtype)
    x_new = np.concatenate([x_tr, copies])
    y_new = np.concatenate([y_tr, y_te[picks].astype(y_tr.dtype)])
    pairs = np.column_stack([picks, len(x_tr) + np.arange(n, dtype=np.int64)])
    return x_new, y_new, pairs, codes


def parse_families(value: str | tuple | list | None, *, is_image: bool = True) -> tuple[str, ...] | None:
    """``"noise,shift"`` (or a sequence) -> the families, checked; None stays None (the classic noise copy)."""
    if value is None:
        return None
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    unknown = [n for n in names if n not in PLANT_FAMILIES]
    if unknown or not names:
        raise AuditError(f"plant_families = {value!r}; choose among {', '.join(PLANT_FAMILIES)}")
    if not is_image and any(n not in FEATURE_FAMILIES for n in names):
        raise AuditError(f"plant_families {','.join(names)}: feature vectors take only "
                         f"{', '.join(FEATURE_FAMILIES)} (the others need images)")
    return tuple(dict.fromkeys(names))


def default_families(ds: Dataset) -> tuple[str, ...]:
    """Every family that keeps the copy a duplicate of its class for this dataset: flip only where a
    mirrored image keeps its class (CIFAR-10, FMoW; a mirrored digit is another symbol)."""
    if not ds.is_image:
        return FEATURE_FAMILIES
    return tuple(f for f in PLANT_FAMILIES if f != "flip" or ds.name in FLIP_SAFE)


def _to_uint8_images(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _crop_resize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut about 10% of the side (at least one pixel) off, split at random between the edges, and resize back."""
    from PIL import Image  # Pillow ships with the image loaders' dependencies

    h, w, c = img.shape
    cut_y, cut_x = max(1, round(0.1 * h)), max(1, round(0.1 * w))
    top, left = int(rng.integers(0, cut_y + 1)), int(rng.integers(0, cut_x + 1))
    crop = _to_uint8_images(img)[top:h - (cut_y - top), left:w - (cut_x - left)]
    channels = [np.asarray(Image.fromarray(crop[..., i]).resize((w, h), Image.BILINEAR)) for i in range(c)]
    return np.stack(channels, axis=-1).astype(np.float64)


def _jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Encode as JPEG at quality 30-60 and decode (block and colour quantisation)."""
    import io

    from PIL import Image

    u8 = _to_uint8_images(img)
    pil = Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8[..., :3])
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(rng.integers(30, 61)))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float64)
    return out.reshape(img.shape) if u8.shape[2] in (1, 3) else np.concatenate([out, img[..., 3:]], axis=-1)


def perturb(copy: np.ndarray, family: str, rng: np.random.Generator, *, sigma: np.ndarray, span: float) -> np.ndarray:
    """One copy (float64, [H, W, C] or [D]) changed by ``family``: ``sigma`` the per-pixel spread for
    noise, ``span`` the value range for brightness."""
    if family == "noise":
        return copy + rng.normal(0.0, 1.0, size=copy.shape) * sigma
    if family == "brightness":
        a, b = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1) * span
        return (copy - copy.mean()) * a + copy.mean() + b
    if family == "shift":
        dy, dx = ONE_PIXEL_MOVES[int(rng.integers(len(ONE_PIXEL_MOVES)))]
        return _shift_one_pixel(copy, dy, dx)
    if family == "crop":
        return _crop_resize(copy, rng)
    if family == "flip":
        return copy[:, ::-1]
    if family == "jpeg":
        return _jpeg(copy, rng)
    raise AuditError(f"unknown perturbation family {family!r}; choose among {', '.join(PLANT_FAMILIES)}")


def plant_family_copies(x_train: np.ndarray, x_test: np.ndarray, picks: np.ndarray, families: tuple[str, ...],
                        rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``x_test[picks]``, each changed by one family (in turn over a seeded order): ``(copies, codes)``."""
    n = len(picks)
    order = rng.permutation(n)
    assigned = [families[int(order[i]) % len(families)] for i in range(n)]
    x_tr = np.asarray(x_train)
    sigma = noise * x_tr.astype(np.float64).std(axis=0) if len(x_tr) else np.zeros(x_test.shape[1:])
    span = 255.0 if np.asarray(x_test).dtype == np.uint8 else float(np.ptp(x_tr)) if len(x_tr) else 1.0
    copies = np.stack([perturb(np.asarray(x_test[i], dtype=np.float64), fam, rng, sigma=sigma, span=span)
                       for i, fam in zip(picks, assigned)]) if n else np.asarray(x_test[:0], dtype=np.float64)
    codes = np.array([PLANT_FAMILIES.index(f) for f in assigned], dtype=np.int64)
    return copies, codes


def split_plant_options(options: dict) -> tuple[dict, dict]:
    """``(loader options, planting options)``: the planting keys are taken out of ``options``."""
    loader = {k: v for k, v in options.items() if k not in PLANT_OPTIONS}
    plant = {k: v for k, v in options.items() if k in PLANT_OPTIONS}
    return loader, plant


def plant_options(n: int, seed: int = 0, noise: float = DEFAULT_PLANT_NOISE, shift: bool | None = None,
                  families: tuple[str, ...] | None = None) -> dict:
    """The ``dataset_options`` entries for a planted run (all explicit, so run.json says what was done)."""
    out = {"plant": int(n), "plant_seed": int(seed), "plant_noise": float(noise),
           "plant_shift": None if shift is None else bool(shift)}
    if families is not None:
        out["plant_families"] = ",".join(families)
    return out


def apply_planting(ds: Dataset, plant: int = 0, plant_seed: int = 0, plant_noise: float = DEFAULT_PLANT_NOISE,
                   plant_shift: bool | None = None, plant_families: str | None = None) -> Dataset:
    """``ds`` with perturbed copies of ``plant`` test images appended to its training set."""
    try:
        n = int(plant)
    except (TypeError, ValueError):
        raise AuditError(f"plant = {plant!r}; give the number of test images to copy into the training set") from None
    try:
        noise = float(plant_noise)
    except (TypeError, ValueError):
        raise AuditError(f"plant_noise = {plant_noise!r}; give a fraction of the per-pixel spread like 0.1") from None
    if n < 1:
        raise AuditError(f"plant = {n}; plant at least 1 test image (or leave the option out)")
    if PLANTED_META in ds.meta:
        raise AuditError(f"{ds.spec} already has planted duplicates; plant once")
    families = parse_families(plant_families, is_image=ds.is_image)
    x_new, y_new, pairs, codes = plant_duplicates_by_family(
        ds.x_train, ds.y_train, ds.x_test, ds.y_test, n, int(plant_seed), noise=noise,
        shift=None if plant_shift is None else bool(plant_shift), families=families)
    picks = pairs[:, 0]
    meta: dict[str, np.ndarray] = {}
    for key, arr in ds.meta.items():
        name, _, part = key.rpartition("_")
        if part == "train":
            test_arr = ds.meta.get(f"{name}_test")
            if test_arr is None:
                continue  # no value to give the copies: drop rather than misalign
            arr = np.concatenate([arr, np.asarray(test_arr)[picks].astype(arr.dtype)])
        meta[key] = arr
    meta[PLANTED_META] = np.concatenate([np.full(ds.n_train, -1, np.int64), picks.astype(np.int64)])
    if codes is not None:
        meta[PLANTED_FAMILY_META] = np.concatenate([np.full(ds.n_train, -1, np.int64), codes])
    return dataclasses.replace(ds, x_train=x_new, y_train=y_new, meta=meta)


def planted_families(ds: Dataset) -> np.ndarray | None:
    """The family code (index into ``PLANT_FAMILIES``) of each planted pair, in :func:`planted_pairs` order;
    None when the copies were planted without families."""
    marks, fams = ds.meta.get(PLANTED_META), ds.meta.get(PLANTED_FAMILY_META)
    if marks is None or fams is None:
        return None
    return np.asarray(fams)[np.flatnonzero(np.asarray(marks) >= 0)].astype(np.int64)


def planted_pairs(ds: Dataset) -> np.ndarray | None:
    """Rows ``(test_index, train_index)`` of the planted copies, or None for an unplanted dataset."""
    marks = ds.meta.get(PLANTED_META)
    if marks is None:
        return None
    train = np.flatnonzero(np.asarray(marks) >= 0)
    return np.column_stack([np.asarray(marks)[train], train]).astype(np.int64)


# ----- planted label errors: a known answer for the label-error finding -------------------
LABEL_PLANT_OPTIONS = ("plant_labels", "plant_labels_seed")
PLANTED_LABEL_META = "planted_label_of_train"  # per training example: its original class if flipped, else -1


def split_label_plant_options(options: dict) -> tuple[dict, dict]:
    """``(other options, label-planting options)``: the ``plant_labels*`` keys are taken out."""
    other = {k: v for k, v in options.items() if k not in LABEL_PLANT_OPTIONS}
    plant = {k: v for k, v in options.items() if k in LABEL_PLANT_OPTIONS}
    return other, plant


def label_plant_options(fraction: float, seed: int = 0) -> dict:
    """The ``dataset_options`` entries for a run with planted label errors (explicit, so run.json says so)."""
    return {"plant_labels": float(fraction), "plant_labels_seed": int(seed)}


def flip_labels(y: np.ndarray, n_classes: int, fraction: float, seed: int = 0,
                eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(fraction × n)`` labels (at least 1) to another class, uniformly: ``(new y, flipped indices)``.

    The examples are drawn without replacement from ``eligible`` (bool mask; default all) with
    ``seed``; each gets a class drawn uniformly from the other ``n_classes - 1`` (symmetric noise).
    Deterministic in ``(y, n_classes, fraction, seed, eligible)``.
    """
    try:
        frac = float(fraction)
    except (TypeError, ValueError):
        raise AuditError(f"plant_labels = {fraction!r}; give the fraction of training labels to flip, like 0.05") from None
    if not 0.0 < frac < 1.0:
        raise AuditError(f"plant_labels = {frac}; give a fraction strictly between 0 and 1, like 0.05")
    if n_classes < 2:
        raise AuditError("flipping labels needs at least two classes")
    y = np.asarray(y, dtype=np.int64)
    pool = np.flatnonzero(np.ones(len(y), bool) if eligible is None else np.asarray(eligible, bool))
    n = max(1, int(round(frac * len(pool))))
    if n > len(pool):
        raise AuditError(f"plant_labels = {frac} asks for {n} flips but only {len(pool)} examples can be flipped")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0xF11,)))
    flipped = np.sort(rng.choice(pool, size=n, replace=False))
    new_y = y.copy()
    new_y[flipped] = (y[flipped] + rng.integers(1, n_classes, size=n)) % n_classes
    return new_y, flipped.astype(np.int64)


def apply_label_planting(ds: Dataset, plant_labels: float = 0.0, plant_labels_seed: int = 0) -> Dataset:
    """``ds`` with a seeded ``plant_labels`` fraction of its training labels flipped to another class.

    Planted duplicates (``plant=N``) keep their labels: only original training examples are
    flipped, so the two plantings can be measured side by side. The truth is recorded in
    ``meta["planted_label_of_train"]`` (the original class of a flipped example, -1 elsewhere).
    """
    if PLANTED_LABEL_META in ds.meta:
        raise AuditError(f"{ds.spec} already has planted label errors; plant once")
    copies = ds.meta.get(PLANTED_META)
    eligible = None if copies is None else np.asarray(copies) < 0
    y_new, flipped = flip_labels(ds.y_train, ds.n_classes, plant_labels, int(plant_labels_seed), eligible=eligible)
    original = np.full(ds.n_train, -1, np.int64)
    original[flipped] = ds.y_train[flipped]
    return dataclasses.replace(ds, y_train=y_new, meta={**ds.meta, PLANTED_LABEL_META: original})


def planted_label_errors(ds: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """``(flipped training indices, their original classes)``, or None without planted label errors."""
    marks = ds.meta.get(PLANTED_LABEL_META)
    if marks is None:
        return None
    marks = np.asarray(marks)
    idx = np.flatnonzero(marks >= 0)
    return idx.astype(np.int64), marks[idx].astype(np.int64)
