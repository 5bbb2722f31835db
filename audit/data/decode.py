"""Image files -> uint8 arrays for ``folder:``, ``csv:`` and ``hf:`` datasets.

* Every source's bytes are hashed (in parallel; hashing is much cheaper than decoding), and
  the hashes, in dataset order, with the size policy, make the cache key: an edited image is
  a new key, so it is decoded again (and the run trained on the old contents refuses the new
  arrays through the dataset fingerprint, as for every other kind).
* Decoding runs on a thread pool (Pillow releases the GIL while it decodes) and fills one
  preallocated array. Colour images become RGB ``[N, H, W, 3]``; a dataset whose images are
  all grayscale stays ``[N, H, W, 1]``; alpha is dropped; 16-bit grayscale is scaled to 8 bits.
  Without ``size=HxW`` every image must have the same size: otherwise one error line lists the
  sizes found and the spec to pass; with it, each image is resized (bilinear) to HxW.
* Decoded arrays are cached once per dataset as ``$AUDIT_DATA/decoded/<name>-<source>-<key>.npz``
  (default ``~/.cache/datamodel-audit/decoded``), so a second command does not decode again.
  A newer entry for the same source (same path and options) replaces older ones.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from audit.data.paths import default_data_dir
from audit.data.spec import Spec
from audit.errors import AuditError
from audit.progress import SILENT, Progress

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                    ".pnm")
DECODER_VERSION = 1  # bump when decoding changes what arrays a file gives
CACHE_FOLDER = "decoded"
CHUNK = 256  # images per pool task: small images are dominated by per-task overhead otherwise


@dataclass(frozen=True)
class Source:
    """One image: a file ``path`` or in-memory ``data`` (hf); ``where`` names it in error lines."""

    where: str
    path: Path | None = None
    data: bytes | None = None

    def read(self, spec: str) -> bytes:
        if self.data is not None:
            return self.data
        try:
            with open(self.path, "rb") as f:  # type: ignore[arg-type]
                return f.read()
        except OSError as e:
            raise AuditError(f"{spec}: cannot read image {self.where}: {e.strerror or e}") from None


def n_workers() -> int:
    """Threads for hashing and decoding: the CPUs this process may use (at most 32)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(32, n))


def _chunks(n: int, size: int = CHUNK) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def parallel_chunks(fn: Callable[[range], object], n: int, progress: Progress, description: str,
                    unit: str) -> list:
    """``fn`` over consecutive chunks of ``range(n)`` on the thread pool; results in order.

    The first failing chunk (in order) re-raises its exception and the rest are cancelled.
    """
    chunks = _chunks(n)
    with progress.task(description, total=n, unit=unit) as task:
        if len(chunks) <= 1 or n_workers() == 1:
            out = []
            for c in chunks:
                out.append(fn(c))
                task.advance(len(c))
            return out
        pool = ThreadPoolExecutor(max_workers=n_workers())
        try:
            futures = [pool.submit(fn, c) for c in chunks]
            out = []
            for c, fut in zip(chunks, futures):
                out.append(fut.result())
                task.advance(len(c))
            return out
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ----- hashing ---------------------------------------------------------------------------------
def hash_sources(sources: Sequence[Source], spec: str, progress: Progress = SILENT) -> list[str]:
    """sha256 (hex) of each source's bytes, in order."""

    def run(chunk: range) -> list[str]:
        return [hashlib.sha256(sources[i].read(spec)).hexdigest() for i in chunk]

    out: list[str] = []
    for part in parallel_chunks(run, len(sources), progress, f"hashing {len(sources):,} images", "files"):
        out.extend(part)
    return out


def hash_files(paths: Sequence[Path], spec: str) -> str:
    """One sha256 over several files' bytes (hf: the split's Arrow files), streamed."""
    h = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        except OSError as e:
            raise AuditError(f"{spec}: cannot read {path}: {e.strerror or e}") from None
        h.update(b"\x00")
    return h.hexdigest()


# ----- decoding --------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def decode_one(data: bytes, where: str, spec: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image's bytes -> uint8 ``[H, W]`` (grayscale) or ``[H, W, 3]`` (colour), resized to
    ``size`` (H, W) when given. AuditError naming ``where`` for anything Pillow cannot decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "RGB"):
                out = im
            elif mode in ("1", "LA", "La"):
                out = im.convert("L")
            elif mode == "I" or mode.startswith("I;16"):  # 16-bit grayscale -> 8 bits
                a = np.asarray(im).astype(np.int64)
                out = Image.fromarray(((np.clip(a, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))
            elif mode == "F":
                out = Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8))
            else:  # RGBA, P, CMYK, YCbCr, ...
                out = im.convert("RGB")
            if size is not None and (out.height, out.width) != size:
                out = out.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(out, dtype=np.uint8)
    except UnidentifiedImageError:
        raise AuditError(f"{spec}: {where} is not an image Pillow can read (empty, corrupt or another file type)") \
            from None
    except AuditError:
        raise
    except Exception as e:  # truncated files (OSError), decompression bombs, plugin errors
        what = "is truncated or corrupt" if isinstance(e, (OSError, SyntaxError, EOFError)) else "cannot be decoded"
        raise AuditError(f"{spec}: {where} {what} ({_one_line(e)}); fix or remove it") from None


def decode_sources(sources: Sequence[Source], spec: Spec, progress: Progress = SILENT) -> np.ndarray:
    """All sources decoded into one uint8 ``[N, H, W, C]`` array (C = 1 when all are grayscale)."""
    n = len(sources)
    size = spec.size
    first = decode_one(sources[0].read(spec.text), sources[0].where, spec.text, size)
    h, w = first.shape[:2]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    gray = np.zeros(n, dtype=bool)

    def run(chunk: range) -> Counter:
        other: Counter = Counter()
        for i in chunk:
            src = sources[i]
            img = first if i == 0 else decode_one(src.read(spec.text), src.where, spec.text, size)
            if img.shape[:2] != (h, w):
                other[(img.shape[0], img.shape[1], src.where)] += 1
                continue
            if img.ndim == 2:
                out[i] = img[:, :, None]
                gray[i] = True
            else:
                out[i] = img
        return other

    mismatched: list[tuple[int, int, str]] = []
    for part in parallel_chunks(run, n, progress, f"decoding {n:,} images", "images"):
        mismatched.extend(part)
    if mismatched:
        raise AuditError(_size_message(spec, (h, w), sources[0].where, n, mismatched))
    if gray.all():
        return np.ascontiguousarray(out[:, :, :, :1])
    return out


def _size_message(spec: Spec, first: tuple[int, int], first_where: str, n: int,
                  mismatched: list[tuple[int, int, str]]) -> str:
    counts: Counter = Counter()
    example: dict[tuple[int, int], str] = {first: first_where}
    for hh, ww, where in mismatched:
        counts[(hh, ww)] += 1
        example.setdefault((hh, ww), where)
    counts[first] = n - len(mismatched)
    ranked = counts.most_common()
    found = "; ".join(f"{hh}x{ww} in {c:,} image{'s' if c > 1 else ''} (e.g. {example[(hh, ww)]})"
                      for (hh, ww), c in ranked[:4])
    if len(ranked) > 4:
        found += f"; {len(ranked) - 4} more sizes"
    common = "{}x{}".format(*ranked[0][0])
    return (f"{spec.text}: images differ in size (HxW): {found}; resize them all by passing the size in the "
            f"spec, e.g. {spec.with_option('size', common)}")


# ----- the decoded-array cache -----------------------------------------------------------------
def cache_dir() -> Path:
    return default_data_dir() / CACHE_FOLDER


def content_key(spec: Spec, groups: dict[str, Sequence[str]], extra: str = "") -> str:
    """The cache key: decoder version, size policy, ``extra`` (e.g. hf's column) and the content
    hashes of each group (split) in order."""
    h = hashlib.sha256(f"v{DECODER_VERSION}|size={spec.size}|{extra}".encode())
    for name, digests in groups.items():
        h.update(f"|{name}:{len(digests)}|".encode())
        h.update("".join(digests).encode())
    return h.hexdigest()[:24]


def source_id(spec: Spec, location: Path) -> str:
    """Which dataset a cache entry is for (its kind, resolved location and options), not its contents."""
    text = f"{spec.kind}|{location.expanduser().resolve()}|{sorted(spec.options.items())}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "data"


def cached_arrays(name: str, source: str, key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored under ``key``, or ``build()``'s (then stored). A cache that cannot be
    read is rebuilt; one that cannot be written is skipped (the arrays are still returned)."""
    folder = cache_dir()
    path = folder / f"{_safe(name)}-{source}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # truncated or foreign: decode again
            pass
    arrays = build()
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        for old in folder.glob(f"*-{source}-*.npz"):  # older contents of the same dataset
            if old.name != path.name:
                old.unlink(missing_ok=True)
    except OSError:
        tmp.unlink(missing_ok=True)
    return arrays


def split_decoded(spec: Spec, sources: dict[str, list[Source]], progress: Progress = SILENT) -> dict[str, np.ndarray]:
    """``{"x_train": ..., "x_test": ...}``: all splits decoded together (one size check, one pool)."""
    flat = [s for part in sources.values() for s in part]
    x = decode_sources(flat, spec, progress)
    out, start = {}, 0
    for split, part in sources.items():
        out[f"x_{split}"] = x[start:start + len(part)]
        start += len(part)
    return out


def decoded_files(spec: Spec, name: str, location: Path, sources: dict[str, list[Source]],
                  progress: Progress = SILENT) -> dict[str, np.ndarray]:
    """``{"x_train": ..., "x_test": ...}`` for image files, decoded once per content: the files
    are hashed, and arrays decoded before from the same bytes in the same order are reused."""
    flat = [s for part in sources.values() for s in part]
    hashes = hash_sources(flat, spec.text, progress)
    digests, start = {}, 0
    for split, part in sources.items():
        digests[split] = hashes[start:start + len(part)]
        start += len(part)
    key = content_key(spec, digests)
    return cached_arrays(name, source_id(spec, location), key, lambda: split_decoded(spec, sources, progress))
