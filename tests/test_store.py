import textwrap

import numpy as np
import pytest

from audit.errors import AuditError
from audit.store import RunConfig, RunStore
from tests.conftest import python_output


def make_config(**kw):
    base = dict(dataset="digits", fingerprint="abc", n_train=30, n_test=10, alpha=0.5, n_models=12, block_size=5,
                trainer={"name": "mlp"})
    return RunConfig(**{**base, **kw})


def test_create_open_shapes(tmp_path):
    store = RunStore.create(tmp_path / "r", make_config())
    assert store.masks.shape == (12, 30) and store.margins.shape == (12, 40) and store.done.shape == (12,)
    assert np.isnan(store.margins).all() and not store.done.any()
    again = RunStore.open(tmp_path / "r")
    assert again.config.n_models == 12 and again.n_blocks == 3
    assert list(again.block_rows(2)) == [10, 11]
    with pytest.raises(AuditError, match="already holds a run"):
        RunStore.create(tmp_path / "r", make_config())


def test_masks_are_exact_size_and_per_index(tmp_path):
    store = RunStore.create(tmp_path / "r", make_config())
    m = store.subset_masks(np.arange(12))
    assert (m.sum(1) == 15).all()
    assert (store.subset_masks(np.array([7]))[0] == m[7]).all()  # independent of which rows are asked together
    assert len(set(map(bytes, m))) == 12
    assert store.model_seeds(np.array([3])) == store.model_seeds(np.arange(5))[3:4]


def test_repeats_share_subsets(tmp_path):
    store = RunStore.create(tmp_path / "r", make_config(repeats=3))
    m = store.subset_masks(np.arange(6))
    assert (m[0] == m[1]).all() and (m[1] == m[2]).all() and not (m[2] == m[3]).all()
    assert len(set(store.model_seeds(np.arange(6)))) == 6


@pytest.mark.parametrize("bad,match", [(dict(alpha=1.0), "alpha"), (dict(alpha=0.0), "alpha"),
                                       (dict(n_models=0), "at least 1"), (dict(n_models=10, repeats=3), "multiple")])
def test_bad_config(tmp_path, bad, match):
    with pytest.raises(AuditError, match=match):
        RunStore.create(tmp_path / "r", make_config(**bad))
    assert not (tmp_path / "r" / "run.json").exists()


def test_refuses_other_dataset_and_settings(tmp_path):
    RunStore.create(tmp_path / "r", make_config())
    with pytest.raises(AuditError, match="different dataset"):
        RunStore.open_or_create(tmp_path / "r", make_config(fingerprint="zzz"))
    with pytest.raises(AuditError, match="seed"):
        RunStore.open_or_create(tmp_path / "r", make_config(seed=4))


def test_disk_space_checked(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100, 90, 10))
    with pytest.raises(AuditError, match="GiB"):
        RunStore.create(tmp_path / "r", make_config())
    assert not (tmp_path / "r" / "masks.npy").exists()


def test_write_rows_grow_and_divergence(tmp_path):
    store = RunStore.create(tmp_path / "r", make_config())
    rows = store.block_rows(0)
    margins = np.ones((5, 40), np.float32)
    margins[1, 3] = np.nan  # a diverged model
    store.write_rows(rows, store.subset_masks(rows), margins)
    assert store.done[:5].all() and not store.done[5:].any()
    assert list(store.finished_rows()) == [0, 2, 3, 4]
    assert store.summary()["diverged"] == 1 and store.pending_blocks() == [1, 2]
    grown = RunStore.open_or_create(tmp_path / "r", make_config(n_models=20))
    assert grown.config.n_models == 20 and grown.done[:5].all() and not grown.done[5:].any()
    assert np.array_equal(grown.margins[0], margins[0]) and grown.n_blocks == 4
    assert RunStore.open(tmp_path / "r").config.n_models == 20


def test_corrupted_arrays_are_one_clear_error(tmp_path):
    RunStore.create(tmp_path / "r", make_config())
    (tmp_path / "r" / "margins.npy").write_bytes(b"not numpy")
    with pytest.raises(AuditError, match="corrupted"):
        RunStore.open(tmp_path / "r")


def test_claim_is_exclusive_across_processes(tmp_path):
    store = RunStore.create(tmp_path / "r", make_config())
    code = textwrap.dedent(f"""
        from audit.store import RunStore
        s = RunStore.open({str(tmp_path / 'r')!r})
        with s.claim(1) as mine:
            print(mine)
    """)
    with store.claim(1) as mine:
        assert mine
        assert python_output(code) == "False"
    assert python_output(code) == "True"
