"""``folder:DIR``: images in class folders, ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``
(torchvision's ImageFolder layout, one folder per split).

Classes are the folder names under ``train/``, sorted; a test class must be one of them.
Images are the files with a common image extension (see ``decode.IMAGE_EXTENSIONS``) anywhere
inside a class folder, in sorted path order; hidden files and other files are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audit.data.dataset import Dataset
from audit.data.decode import IMAGE_EXTENSIONS, Source, decoded_files
from audit.data.spec import Spec, dataset_name
from audit.errors import AuditError
from audit.progress import SILENT, Progress

SPLITS = ("train", "test")
LAYOUT = "expected DIR/train/<class>/<image> and DIR/test/<class>/<image>"


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, following links), in sorted path order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_name(f))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _class_dirs(split_dir: Path, spec: str) -> list[Path]:
    try:
        entries = sorted(split_dir.iterdir(), key=lambda p: p.name)
    except OSError as e:
        raise AuditError(f"{spec}: cannot list {split_dir}: {e.strerror or e}") from None
    loose = [p for p in entries if p.is_file() and is_image_name(p.name)]
    if loose:
        raise AuditError(f"{spec}: {loose[0]} is not inside a class folder; move it to "
                         f"{split_dir}/<class>/ ({LAYOUT})")
    return [p for p in entries if p.is_dir() and not p.name.startswith(".")]


def load_folder(spec: Spec, progress: Progress = SILENT) -> Dataset:
    """Load a class-folder dataset; images decoded in parallel and cached (audit.data.decode)."""
    if not spec.arg:
        raise AuditError(f"{spec.text}: folder needs a directory: use folder:DIR ({LAYOUT})")
    root = Path(spec.arg).expanduser()
    if not root.is_dir():
        raise AuditError(f"{spec.text}: {root} is not a directory; {LAYOUT}")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise AuditError(f"{spec.text}: the {split} split is missing: {root / split} is not a directory; {LAYOUT}")
    classes = tuple(p.name for p in _class_dirs(root / "train", spec.text))
    if not classes:
        raise AuditError(f"{spec.text}: the train split is missing: {root / 'train'} has no class folders; {LAYOUT}")
    index = {name: i for i, name in enumerate(classes)}
    sources: dict[str, list[Source]] = {}
    labels: dict[str, list[int]] = {}
    paths: dict[str, list[str]] = {}
    for split in SPLITS:
        sources[split], labels[split], paths[split] = [], [], []
        dirs = _class_dirs(root / split, spec.text)
        if not dirs:
            raise AuditError(f"{spec.text}: the {split} split is missing: {root / split} has no class folders; {LAYOUT}")
        for d in dirs:
            if d.name not in index:
                raise AuditError(f"{spec.text}: {d} is class '{d.name}', which is not among the train classes "
                                 f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''}); "
                                 "every test class needs a train folder")
            files = _images_in(d)
            if not files:
                raise AuditError(f"{spec.text}: class folder {d} is empty (no {', '.join(e[1:] for e in IMAGE_EXTENSIONS[:6])}"
                                 ", ... files); add images or remove the folder")
            for f in files:
                rel = f.relative_to(root).as_posix()
                sources[split].append(Source(where=str(f), path=f))
                labels[split].append(index[d.name])
                paths[split].append(rel)
    arrays = decoded_files(spec, dataset_name(spec.text), root, sources, progress)
    meta = string_meta("path", paths)
    return Dataset(spec=spec.text, x_train=arrays["x_train"], y_train=np.array(labels["train"], dtype=np.int64),
                   x_test=arrays["x_test"], y_test=np.array(labels["test"], dtype=np.int64), classes=classes,
                   meta=meta, captions=("path",))


def string_meta(name: str, values: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """``{name_train, name_test}`` string arrays of one dtype (so planted copies are not truncated)."""
    both = np.array([*values["train"], *values["test"]], dtype=str)
    n = len(values["train"])
    return {f"{name}_train": both[:n], f"{name}_test": both[n:]}
