"""Where datasets live on disk when a spec names no folder."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "AUDIT_DATA"


def default_data_dir() -> Path:
    """``$AUDIT_DATA`` when set, else ``~/.cache/datamodel-audit``."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "datamodel-audit"


def resolve_data_dir(directory: str | os.PathLike[str] | None, folder: str) -> Path:
    """The dataset folder named ``folder``.

    ``directory`` may be that folder itself or its parent; ``None`` means
    ``default_data_dir() / folder``. The result need not exist (loaders report that).
    """
    if directory is None or str(directory).strip() == "":
        return default_data_dir() / folder
    path = Path(directory).expanduser()
    if path.name != folder and (path / folder).is_dir():
        return path / folder
    return path
