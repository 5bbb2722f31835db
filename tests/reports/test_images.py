"""Thumbnails: inline PNGs, small images enlarged with square pixels, odd data refused."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from audit.reports import images


def png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_small_images_are_enlarged_with_square_pixels():
    x = np.zeros((8, 8), np.uint8)
    x[0, 0] = 255
    im = png(images.png_bytes(x, size=72))
    assert im.size == (72, 72) and im.mode == "L"
    a = np.asarray(im)
    assert (a[:9, :9] == 255).all() and a[9:, :].max() == 0


def test_colour_large_and_float_images():
    rgb = np.random.default_rng(0).integers(0, 256, (224, 112, 3), dtype=np.uint8)
    im = png(images.png_bytes(rgb, size=72))
    assert im.size == (36, 72) and im.mode == "RGB"
    f = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8, 1)
    a = np.asarray(png(images.png_bytes(f, size=8)))
    assert a.min() == 0 and a.max() == 255
    assert png(images.png_bytes(np.full((4, 4), 0.5), 4)).size == (4, 4)  # constant float image: no division by 0


def test_uris_and_refusals(digits):
    uri = images.image_uri(digits.x_test[0])
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:4] == b"\x89PNG"
    assert images.image_uri(np.zeros(64)) is None  # a feature vector
    assert images.image_uri(np.zeros((4, 4, 2))) is None
    src = images.ImageSource(digits)
    ex = src.example("test", 3, weight="0.5")
    assert ex["uri"] == src.uri("test", 3) and ex["label"] == digits.classes[digits.y_test[3]] and ex["weight"] == "0.5"
    assert src.uri("train", digits.n_train) is None and src.label("train", -1) is None
    none = images.ImageSource(None)
    assert none.uri("test", 0) is None and none.label("test", 0) is None
