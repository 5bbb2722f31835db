"""Dataset specs (``digits``, ``cifar10[:DIR]``, ``fmow[:DIR]``, ``npz:FILE``) -> one Dataset."""

from __future__ import annotations

from audit.data.dataset import Dataset, validate
from audit.errors import AuditError

__all__ = ["Dataset", "load_dataset", "dataset_kind", "KINDS"]

KINDS = ("digits", "cifar10", "fmow", "npz")


def dataset_kind(spec: str) -> str:
    """The loader name of a spec; AuditError for an unknown one."""
    kind = spec.partition(":")[0].strip().lower()
    if kind not in KINDS:
        raise AuditError(f"unknown dataset '{spec}': use digits, cifar10[:DIR], fmow[:DIR] or npz:FILE")
    return kind


def load_dataset(spec: str, **options) -> Dataset:
    """Load and validate the dataset a spec names. Options go to the loader (e.g. fmow year).

    ``plant=N`` (with ``plant_seed``, ``plant_noise``, ``plant_shift``) appends perturbed
    copies of N test images to the training set (audit.data.planting), for any kind;
    ``plant_labels=FRACTION`` (with ``plant_labels_seed``) flips that fraction of the
    training labels to another class, recording which.
    """
    from audit.data.planting import (apply_label_planting, apply_planting, split_label_plant_options,
                                     split_plant_options)

    options, plant = split_plant_options(options)
    options, label_plant = split_label_plant_options(options)
    kind = dataset_kind(spec)
    arg = spec.partition(":")[2] or None
    if kind == "digits":
        from audit.data.digits import load_digits_dataset

        ds = load_digits_dataset(spec)
    elif kind == "cifar10":
        from audit.data.cifar10 import load_cifar10

        ds = load_cifar10(arg, spec=spec)
    elif kind == "fmow":
        from audit.data.fmow import load_fmow

        ds = load_fmow(arg, spec=spec, **options)
    else:
        if not arg:
            raise AuditError("npz needs a file: use npz:PATH/TO/data.npz")
        from audit.data.npz import load_npz

        ds = load_npz(arg, spec=spec)
    ds = validate(ds)
    if plant.get("plant"):
        ds = validate(apply_planting(ds, **plant))
    if label_plant.get("plant_labels"):
        ds = validate(apply_label_planting(ds, **label_plant))
    return ds
