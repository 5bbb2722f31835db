"""Datamodel embeddings (audit.audits.embed): PCA of the normalised weight rows, spectral clusters."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from audit import pipeline
from audit.audits import embed as E
from audit.audits.embed import EMBED, EmbedConfig
from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.jsonio import save_npz
from tests.cli_inprocess import call_main
from tests.conftest import assert_one_line_error, run_cli

RUNNERS = {"subprocess": run_cli, "in-process": call_main}


def numpy_counts(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Explained variance ratios of ``x``'s rows by a direct SVD, and the components for 50% / 90%."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    ratios = s ** 2 / (s ** 2).sum()
    cum = np.cumsum(ratios)
    return ratios, int(np.searchsorted(cum, 0.5 - 1e-9) + 1), int(np.searchsorted(cum, 0.9 - 1e-9) + 1)


def synthetic(n_train: int = 60, n_test: int = 30, seed: int = 0) -> tuple[np.ndarray, Dataset]:
    """LASSO-like weights (mostly zero, a few all-zero rows) and a feature dataset of the same size."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_train + n_test, n_train)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    w[[3, n_train + 2]] = 0
    ds = Dataset(spec="npz:synthetic", x_train=rng.normal(size=(n_train, 4)), y_train=rng.integers(0, 3, n_train),
                 x_test=rng.normal(size=(n_test, 4)), y_test=rng.integers(0, 3, n_test), classes=("a", "b", "c"))
    return w, ds


def test_rows_are_unit_norm_and_zero_rows_stay_zero():
    w, _ = synthetic()
    x, zeros = E.normalise_rows(w)
    norms = np.linalg.norm(x, axis=1)
    nonzero = np.linalg.norm(w, axis=1) > 0
    assert zeros == int((~nonzero).sum()) == 2
    np.testing.assert_allclose(norms[nonzero], 1.0, atol=1e-5)
    assert (norms[~nonzero] == 0).all()
    np.testing.assert_allclose(x[nonzero] * np.linalg.norm(w[nonzero], axis=1)[:, None], w[nonzero], atol=1e-5)


def test_component_counts_agree_with_a_direct_svd_on_both_memory_branches():
    w, ds = synthetic()
    x, _ = E.normalise_rows(w[:ds.n_train])
    ratios, c50, c90 = numpy_counts(x.astype(np.float64))
    dense, _, _ = E.embed(w, ds, EmbedConfig(clusters=3))
    assert dense.method.startswith("exact") and dense.datamodels.exact
    assert (dense.datamodels.components_50, dense.datamodels.components_90) == (c50, c90)
    np.testing.assert_allclose(dense.datamodels.ratios, ratios[:len(dense.datamodels.ratios)], atol=1e-5)
    # a budget too small for the dense branch: sparse CSR + ARPACK, the top components only
    budget_gb = 1e-4  # 100 kB: the 60 × 60 dense branch needs 115 kB
    assert not E.dense_fits(ds.n_train, ds.n_train, budget_gb * 2**30)
    sparse, arrays, _ = E.embed(w, ds, EmbedConfig(clusters=3, max_components=20, memory_gb=budget_gb))
    assert "ARPACK" in sparse.method and not sparse.datamodels.exact and sparse.datamodels.computed == 20
    np.testing.assert_allclose(sparse.datamodels.ratios, ratios[:20], atol=1e-4)
    assert sparse.datamodels.components_50 == (c50 if c50 <= 20 else None)
    assert sparse.datamodels.count_label(0.9) == (str(c90) if c90 <= 20 else "> 20")
    assert arrays["train"].shape == (ds.n_train, 20) and arrays["test"].shape == (ds.n_test, 20)
    with pytest.raises(AuditError, match="affinity matrix.*raise --memory-gb"):  # said before any work
        E.embed(w, ds, EmbedConfig(clusters=3, memory_gb=1e-6))
    w8, ds8 = synthetic(n_test=8)
    with pytest.raises(AuditError, match="non-zero weights.*raise --memory-gb"):  # 5 kB: the CSR does not fit either
        E.embed(w8, ds8, EmbedConfig(clusters=3, memory_gb=5e-6))


def test_weights_without_any_non_zero_row_are_an_audit_error():
    w, ds = synthetic()
    w[ds.n_train:] = 0
    with pytest.raises(AuditError, match="none of the 30 test targets"):
        E.embed(w, ds, EmbedConfig(clusters=3))
    w[:] = 0
    with pytest.raises(AuditError, match="none of the 60 train targets"):
        E.embed(w, ds, EmbedConfig(clusters=3))


def test_components_for_reads_the_cumulative_curve():
    assert E.components_for(np.array([0.4, 0.1, 0.3, 0.2]), 0.5) == 2
    assert E.components_for(np.array([0.4, 0.1, 0.3, 0.2]), 0.9) == 4
    assert E.components_for(np.array([0.3, 0.1]), 0.5) is None


@pytest.fixture(scope="module")
def embedded(small_digits_run, digits, tmp_path_factory):
    """A copy of the small digits run with the embed step run (no reference models: no representation curve)."""
    run = tmp_path_factory.mktemp("embed") / "run"
    shutil.copytree(small_digits_run, run, ignore=shutil.ignore_patterns("claims", "*.lock", "audits", "reference*"))
    return run, EMBED.run(run, dataset=digits)


def test_digits_embedding_matches_numpy_and_saves_its_coordinates(embedded, digits):
    run, r = embedded
    dm = pipeline.load_datamodels(run)
    x, zeros = E.normalise_rows(dm.weights[:digits.n_train])
    _, c50, c90 = numpy_counts(x.astype(np.float64))
    assert (r.datamodels.components_50, r.datamodels.components_90) == (c50, c90)
    assert r.zero_train_rows == zeros
    train, test = np.load(EMBED.path(run, "train")), np.load(EMBED.path(run, "test"))
    assert train.shape == (digits.n_train, r.saved_components) and test.shape == (digits.n_test, r.saved_components)
    np.testing.assert_allclose(np.load(EMBED.path(run, "variance")), r.datamodels.ratios)
    # the saved coordinates are the centred embeddings on orthonormal directions: their variance is the spectrum's
    total = x.astype(np.float64).var(0, ddof=1).sum()
    np.testing.assert_allclose(train.var(0, ddof=1) / total, r.datamodels.ratios[:r.saved_components], rtol=1e-3)
    assert len(r.top) == EmbedConfig().components
    for c in r.top:  # the images at either end are the arg-max / arg-min of the saved coordinates
        for coords, pos, neg in ((train[:, c.component], c.train_positive, c.train_negative),
                                 (test[:, c.component], c.test_positive, c.test_negative)):
            assert pos[0].index == int(np.argmax(coords)) and neg[0].index == int(np.argmin(coords))
            assert [e.index for e in pos] == list(np.argsort(-coords, kind="stable")[:len(pos)])
            assert [e.coordinate for e in neg] == sorted(e.coordinate for e in neg)
            assert min(e.coordinate for e in pos) >= max(e.coordinate for e in neg)


def test_clusters_are_a_partition_and_repeat_with_the_seed(embedded, digits):
    run, r = embedded
    with EMBED.path(run, "clusters").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["test_index"]) for row in rows] == list(range(digits.n_test))
    ids = np.array([int(row["cluster"]) for row in rows])
    assert set(ids) == set(range(r.k)) == {c.cluster for c in r.clusters}
    assert sum(c.size for c in r.clusters) == digits.n_test
    for c in r.clusters:
        members = np.flatnonzero(ids == c.cluster)
        assert c.size == len(members) and set(c.examples) <= set(members)
        assert sum(c.class_counts.values()) == c.size
        assert c.class_counts[c.majority] == max(c.class_counts.values())
    test = np.load(EMBED.path(run, "test"))
    again, gamma = E.spectral_clusters(test, r.k, 0, 1e9)
    assert gamma == pytest.approx(r.gamma)
    np.testing.assert_array_equal(again, ids)


def test_without_reference_models_the_representation_curve_is_absent_with_a_reason(embedded):
    _, r = embedded
    assert r.representation is None and "reference models" in r.representation_note
    text = " ".join(getattr(b, "text", "") for b in EMBED.summary(r))
    assert "no representation curve" in text


def test_the_representation_curve_comes_from_the_reference_features(embedded, digits, tmp_path):
    run, _ = embedded
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rng = np.random.default_rng(1)
    n = digits.n_train + digits.n_test
    basis = np.linalg.qr(rng.normal(size=(12, 3)))[0].T  # features varying along 3 directions only
    feats = (rng.normal(size=(n, 3)) * [3.0, 2.0, 1.0]) @ basis
    assert EMBED.is_current(copy)
    save_npz(copy / "reference.npz", features=feats.astype(np.float32),
             mean_logits=rng.normal(size=(n, 10)).astype(np.float32), n_models=np.int64(1))
    assert not EMBED.is_current(copy)  # reference models trained since: the curve would change
    r = EMBED.run(copy, dataset=digits)
    assert EMBED.is_current(copy)
    _, c50, c90 = numpy_counts(feats[:digits.n_train].astype(np.float64))
    assert r.representation is not None and r.representation.width == 12
    assert (r.representation.components_50, r.representation.components_90) == (c50, c90)
    assert c90 <= 3


@pytest.mark.parametrize("runner", RUNNERS)
def test_bad_input_is_one_line(runner, embedded, small_digits_run, tmp_path):
    run, _ = embedded
    before = EMBED.path(run).read_bytes()
    cases = (("--clusters", "1"), ("--clusters", "500"))  # the console script: one case each of the two kinds
    for args in cases if runner == "in-process" else cases[:1]:
        proc = RUNNERS[runner]("embed", str(run), *args)
        assert_one_line_error(proc)
        assert "--clusters" in proc.stderr
    assert EMBED.path(run).read_bytes() == before  # nothing half-written, nothing finished lost
    unfitted = tmp_path / "unfitted"
    shutil.copytree(small_digits_run, unfitted, ignore=shutil.ignore_patterns("claims", "*.lock", "datamodels.npz",
                                                                            "audits"))
    proc = RUNNERS[runner]("embed", str(unfitted))
    assert_one_line_error(proc)
    assert "audit fit" in proc.stderr
    assert not EMBED.path(unfitted).exists()


def test_the_report_shows_the_sections(embedded):
    from audit.reports.render import render_html

    run, r = embedded
    page = render_html(run)
    start = page.index('id="embed"')
    section = page[start:page.index("</section>", start)]
    assert "components for 50%" in section and "Top principal components" in section
    assert f"{r.k} spectral clusters" in section and "no representation curve" in section
    assert section.count('class="component"') == len(r.top)
    assert section.count('class="cluster"') == r.k
    assert section.count('<figure class="thumb') == sum(4 * EmbedConfig().per_end for _ in r.top) + sum(
        len(c.examples) for c in r.clusters)


def test_a_negative_cluster_seed_is_one_line(small_digits_run, digits, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_digits_run, run, ignore=shutil.ignore_patterns("claims", "*.lock", "audits"))
    proc = call_main("embed", str(run), "--cluster-seed", "-1")  # was an internal error from scikit-learn
    assert_one_line_error(proc)
    assert "--cluster-seed" in proc.stderr and not EMBED.path(run).exists()
    with pytest.raises(AuditError, match="--cluster-seed must be at least 0"):
        E.embed(np.zeros((digits.n_train + digits.n_test, digits.n_train), np.float32), digits,
                EmbedConfig(cluster_seed=-1))
