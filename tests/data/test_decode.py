"""Image decoding: parallel equals serial, modes become RGB or one channel, progress is reported,
and the cache keeps one entry per dataset source."""

from __future__ import annotations

import io

import numpy as np
import pytest

from audit.data import decode
from audit.data.decode import Source, decode_one, decode_sources
from audit.data.spec import parse_spec
from audit.errors import AuditError


def _png(a: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_parallel_decoding_equals_serial(rng, monkeypatch):
    imgs = rng.integers(0, 256, size=(decode.CHUNK * 3 + 17, 5, 4, 3), dtype=np.uint8)
    sources = [Source(where=f"img{i}", data=_png(a)) for i, a in enumerate(imgs)]
    spec = parse_spec("folder:/x")
    monkeypatch.setattr(decode, "n_workers", lambda: 1)
    serial = decode_sources(sources, spec)
    monkeypatch.setattr(decode, "n_workers", lambda: 4)
    parallel = decode_sources(sources, spec)
    np.testing.assert_array_equal(serial, imgs)
    np.testing.assert_array_equal(parallel, imgs)


def test_modes(rng):
    gray = rng.integers(0, 256, size=(3, 4), dtype=np.uint8)
    deep = (gray.astype(np.uint16) * 257)
    np.testing.assert_array_equal(decode_one(_png(gray), "g", "s"), gray)
    np.testing.assert_array_equal(decode_one(_png(deep), "d", "s"), gray)  # 16-bit scaled to 8 bits
    rgba = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_one(_png(rgba), "a", "s"), rgba[:, :, :3])
    mixed = decode_sources([Source("g", data=_png(gray)), Source("c", data=_png(rgba[:, :, :3]))], parse_spec("csv:x"))
    np.testing.assert_array_equal(mixed[0], np.repeat(gray[:, :, None], 3, axis=2))  # gray among colour -> RGB


def test_unreadable_bytes_name_the_image():
    with pytest.raises(AuditError, match="spec: cat.png is not an image"):
        decode_one(b"", "cat.png", "spec")


class Recorder:
    def __init__(self):
        self.tasks = []

    def task(self, description, total, unit=""):
        import contextlib

        recorder = self

        class Task:
            def advance(self, n=1):
                recorder.tasks[-1][2] += n

        @contextlib.contextmanager
        def cm():
            recorder.tasks.append([description, total, 0])
            yield Task()

        return cm()


def test_progress_and_one_cache_entry_per_source(tmp_path, monkeypatch, rng):
    from PIL import Image

    monkeypatch.setenv("AUDIT_DATA", str(tmp_path / "data"))
    root = tmp_path / "imgs"
    paths = []
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for i in range(3):
            paths.append(root / split / f"{i}.png")
            Image.fromarray(rng.integers(0, 256, size=(4, 4), dtype=np.uint8)).save(paths[-1])
    sources = {"train": [Source(str(p), path=p) for p in paths[:3]], "test": [Source(str(p), path=p) for p in paths[3:]]}
    spec = parse_spec(f"folder:{root}")
    progress = Recorder()
    arrays = decode.decoded_files(spec, "imgs", root, sources, progress)
    assert [t[0].split()[0] for t in progress.tasks] == ["hashing", "decoding"]
    assert all(t[1] == t[2] == 6 for t in progress.tasks)
    assert arrays["x_train"].shape == (3, 4, 4, 1)
    progress.tasks.clear()
    decode.decoded_files(spec, "imgs", root, sources, progress)
    assert [t[0].split()[0] for t in progress.tasks] == ["hashing"]  # cached: nothing decoded
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(paths[0])
    decode.decoded_files(spec, "imgs", root, sources, progress)
    assert len(list(decode.cache_dir().glob("*.npz"))) == 1  # the edited contents replaced the old entry
