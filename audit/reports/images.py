"""Dataset images as inline PNG data URIs, upscaled so small images stay sharp."""

from __future__ import annotations

import base64
import io

import numpy as np

DEFAULT_SIZE = 72  # CSS pixels a thumbnail is rendered at (before the browser's own scaling)


def png_bytes(img: np.ndarray, size: int = DEFAULT_SIZE) -> bytes:
    """PNG of one image ``[H, W]`` or ``[H, W, C]`` (C in 1, 3, 4), about ``size`` pixels high.

    Images smaller than ``size`` are enlarged by an integer factor with nearest-neighbour
    sampling (pixels stay square and sharp); larger ones are reduced with Lanczos. Float
    images are rescaled to 0..255 from their own range.
    """
    from PIL import Image

    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"not an image: shape {a.shape}")
    if a.dtype != np.uint8:
        f = a.astype(np.float64)
        lo, hi = np.nanmin(f), np.nanmax(f)
        a = np.zeros(f.shape, np.uint8) if hi <= lo else np.clip((f - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    im = Image.fromarray(np.ascontiguousarray(a), mode=mode)
    h, w = a.shape[:2]
    if h < size:
        factor = max(1, size // h)
        im = im.resize((w * factor, h * factor), Image.NEAREST)
    elif h > size:
        im = im.resize((max(1, round(w * size / h)), size), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def image_uri(img: np.ndarray, size: int = DEFAULT_SIZE) -> str | None:
    """``data:image/png;base64,...`` for an image, or None for data without image structure."""
    try:
        return data_uri(png_bytes(img, size), "image/png")
    except ValueError:
        return None


class ImageSource:
    """Thumbnails of a dataset's train and test images, cached by (split, index).

    ``dataset`` may be None (data no longer available) or hold feature vectors; then every
    thumbnail is None and the templates show the index and label only.
    """

    def __init__(self, dataset, size: int = DEFAULT_SIZE, predictions: np.ndarray | None = None) -> None:
        self.dataset = dataset
        self.size = size
        self.predictions = predictions  # class per target (train first, then test) of the full-data models, or None
        self._cache: dict[tuple[str, int], str | None] = {}
        self.has_images = dataset is not None and getattr(dataset, "is_image", False)

    def uri(self, split: str, index: int) -> str | None:
        if not self.has_images:
            return None
        key = (split, int(index))
        if key not in self._cache:
            x = self.dataset.x_train if split == "train" else self.dataset.x_test
            self._cache[key] = image_uri(x[int(index)], self.size) if 0 <= int(index) < len(x) else None
        return self._cache[key]

    def label(self, split: str, index: int) -> str | None:
        """The class name of an example, or None when unknown."""
        if self.dataset is None:
            return None
        y = self.dataset.y_train if split == "train" else self.dataset.y_test
        if not 0 <= int(index) < len(y):
            return None
        c = int(y[int(index)])
        return str(self.dataset.classes[c]) if 0 <= c < len(self.dataset.classes) else str(c)

    def predicted(self, split: str, index: int) -> str | None:
        """The class the full-data models predict for an example (None when there are no reference models)."""
        if self.predictions is None or self.dataset is None:
            return None
        row = int(index) + (self.dataset.n_train if split == "test" else 0)
        if not 0 <= int(index) < (self.dataset.n_train if split == "train" else self.dataset.n_test) \
                or row >= len(self.predictions):
            return None
        c = int(self.predictions[row])
        return str(self.dataset.classes[c]) if 0 <= c < len(self.dataset.classes) else str(c)

    def caption(self, split: str, index: int) -> list[tuple[str, str]]:
        """The dataset's caption metadata of an example (a folder/CSV image's path, a CSV's extra
        columns) as ``[(name, value), ...]``; empty when the dataset has none."""
        caption = getattr(self.dataset, "caption", None)
        return caption(split, int(index)) if caption is not None else []

    def example(self, split: str, index: int, **extra) -> dict:
        """A dict the templates render as one thumbnail: split, index, label (given), predicted (by the
        full-data models), uri, caption, plus ``extra``."""
        return {"split": split, "index": int(index), "label": self.label(split, index),
                "predicted": self.predicted(split, index), "uri": self.uri(split, index),
                "caption": self.caption(split, index), **extra}
