"""drop_pages: a memory-mapped file's pages leave the process, its values stay."""

from __future__ import annotations

import sys

import numpy as np
import torch

from audit.mapped import drop_pages, mark_mapped


def _resident_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_numpy_map_keeps_its_values_and_leaves_the_process(tmp_path):
    a = np.lib.format.open_memmap(tmp_path / "a.npy", "w+", np.float32, (4096, 1024))  # 16 MiB
    a[:] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    a.flush()
    del a
    r = np.load(tmp_path / "a.npy", mmap_mode="r")
    before = _resident_file_kib()
    total = float(np.asarray(r, np.float64).sum())
    read = _resident_file_kib()
    drop_pages(r[10:20])  # a view drops the pages of the whole mapping
    after = _resident_file_kib()
    assert read - before > 8_000 and read - after > 8_000  # ~16 MiB came in, and left
    assert float(np.asarray(r, np.float64).sum()) == total and r[4095, 1023] == 4096 * 1024 - 1


def test_copy_on_write_maps_and_plain_arrays_are_left_alone(tmp_path):
    np.save(tmp_path / "b.npy", np.ones(1 << 20, np.float32))
    c = np.load(tmp_path / "b.npy", mmap_mode="c")
    c[:10] = 5.0  # a private change the kernel would throw away
    plain = np.full(1 << 20, 3.0, np.float32)
    drop_pages(c, plain, torch.ones(1 << 20))  # an unmarked tensor is anonymous memory: never dropped
    assert c[:10].tolist() == [5.0] * 10 and plain.sum() == 3.0 * (1 << 20)


def test_marked_mapped_tensor_keeps_its_values(tmp_path):
    torch.save({"w": torch.arange(1 << 22, dtype=torch.float32)}, tmp_path / "w.pt")
    w = mark_mapped(torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)["w"])
    total = float(w.double().sum())
    drop_pages(w, [w])
    assert float(w.double().sum()) == total


def test_a_pt_file_in_the_other_byte_order_keeps_its_swapped_pages(tmp_path):
    """torch swaps a foreign-order file's mapped pages in place: dropping them would bring back raw bytes."""
    import zipfile

    from audit.release import load_pt

    w = torch.arange(1 << 16, dtype=torch.float32).reshape(256, 256)
    torch.save({"weight": w, "bias": torch.zeros(256), "lam": torch.zeros(256)}, tmp_path / "native.pt")
    other = "big" if sys.byteorder == "little" else "little"
    with zipfile.ZipFile(tmp_path / "native.pt") as zin, \
            zipfile.ZipFile(tmp_path / "foreign.pt", "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/byteorder"):
                data = other.encode()
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                data = np.frombuffer(data, "=f4").byteswap().tobytes()
            zout.writestr(info, data)
    native, foreign = load_pt(tmp_path / "native.pt")["weight"], load_pt(tmp_path / "foreign.pt")["weight"]
    assert getattr(native, "_audit_mapped", False) and not getattr(foreign, "_audit_mapped", False)
    drop_pages(foreign)
    assert torch.equal(foreign, w)
