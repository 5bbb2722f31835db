"""Dataset specs -> one Dataset.

``digits``, ``cifar10[:DIR]``, ``fmow[:DIR]``, ``npz:FILE`` and users' own images:
``folder:DIR``, ``csv:FILE``, ``hf:DIR`` (options after ``?``, e.g. ``folder:DIR?size=32x32``;
audit.data.spec).
"""

from __future__ import annotations

from audit.data.cifar10 import load_cifar10
from audit.data.dataset import Dataset, validate
from audit.data.digits import load_digits_dataset
from audit.data.fmow import load_fmow
from audit.data.folder import load_folder
from audit.data.hf import load_hf
from audit.data.manifest import load_manifest
from audit.data.npz import load_npz
from audit.data.planting import apply_label_planting, apply_planting, split_label_plant_options, split_plant_options
from audit.data.spec import KINDS, SPEC_HELP, dataset_name, kind_of, parse_spec
from audit.errors import AuditError
from audit.progress import SILENT, Progress

__all__ = ["Dataset", "load_dataset", "dataset_kind", "dataset_name", "KINDS", "SPEC_HELP"]


def dataset_kind(spec: str) -> str:
    """The loader name of a spec; AuditError for an unknown one."""
    return kind_of(spec)


def load_dataset(spec: str, progress: Progress = SILENT, **options) -> Dataset:
    """Load and validate the dataset a spec names. Options go to the loader (e.g. fmow year).

    ``plant=N`` (with ``plant_seed``, ``plant_noise``, ``plant_shift``) appends perturbed
    copies of N test images to the training set (audit.data.planting), for any kind;
    ``plant_labels=FRACTION`` (with ``plant_labels_seed``) flips that fraction of the
    training labels to another class, recording which. ``progress`` shows hashing and
    decoding of ``folder``/``csv``/``hf`` images.
    """
    options, plant = split_plant_options(options)
    options, label_plant = split_label_plant_options(options)
    parsed = parse_spec(spec)
    kind = parsed.kind
    arg = spec.partition(":")[2] or None
    if kind == "digits":
        ds = load_digits_dataset(spec)
    elif kind == "cifar10":
        ds = load_cifar10(arg, spec=spec)
    elif kind == "fmow":
        ds = load_fmow(arg, spec=spec, **options)
    elif kind == "folder":
        ds = load_folder(parsed, progress=progress)
    elif kind == "csv":
        ds = load_manifest(parsed, progress=progress)
    elif kind == "hf":
        ds = load_hf(parsed, progress=progress)
    else:
        if not arg:
            raise AuditError("npz needs a file: use npz:PATH/TO/data.npz")
        ds = load_npz(arg, spec=spec)
    ds = validate(ds)
    if plant.get("plant"):
        ds = validate(apply_planting(ds, **plant))
    if label_plant.get("plant_labels"):
        ds = validate(apply_label_planting(ds, **label_plant))
    return ds
