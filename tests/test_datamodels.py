"""LASSO datamodels: solver vs scikit-learn, λ selection, row exclusion, baseline, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from audit.datamodels import (Datamodels, difference_of_means, evaluate, fit_datamodels, lambda_max,
                              lambda_ratios, lasso_objective, lasso_path, path_start, solve_lasso,
                              spearman_columns, target_rows)
from audit.errors import AuditError


def random_masks(rng, m: int, n: int, alpha: float = 0.5) -> np.ndarray:
    """Exactly floor(alpha n) examples per model, like the run store."""
    k = int(alpha * n)
    order = np.argsort(rng.random((m, n)), axis=1)
    masks = np.zeros((m, n), bool)
    np.put_along_axis(masks, order[:, :k], True, axis=1)
    return masks


def planted(rng, m: int, n: int, n_test: int, k: int = 4, scale: float = 1.0, noise: float = 0.3):
    """Margins = sparse linear model + noise; train targets get a big self-effect when included."""
    T = n + n_test
    masks = random_masks(rng, m, n)
    W = np.zeros((T, n), np.float32)
    for j in range(T):
        idx = rng.choice([i for i in range(n) if i != j], k, replace=False)
        W[j, idx] = rng.choice([-1.0, 1.0], k) * rng.uniform(0.6, 1.0, k) * scale
    b = rng.normal(1.0, 1.0, T).astype(np.float32)
    Y = masks.astype(np.float32) @ W.T + b + noise * rng.standard_normal((m, T)).astype(np.float32)
    Y[:, :n] += 5.0 * masks  # the datamodel of a train target must never see these rows
    return masks, Y.astype(np.float32), W, b


# ----- (a) the solver reaches scikit-learn's objective ----------------------------------------
@pytest.mark.parametrize("ratio", [0.9, 0.3, 0.05, 0.005])
def test_solver_matches_sklearn_objective(ratio):
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(1)
    m, n, n_test = 300, 40, 3
    masks, Y, _, _ = planted(rng, m, n, n_test, noise=1.0)
    targets = [0, 7, 19, n, n + 2]  # train targets (own rows) and test targets
    Y = Y[:, targets]
    D = target_rows(masks, n + n_test)[:, targets]
    lam = lambda_max(masks, Y, D) * ratio
    sol = solve_lasso(masks, Y, lam, D, tol=1e-6)
    assert sol.converged.all()
    for j in range(len(targets)):
        rows = D[:, j]
        x, y = masks[rows].astype(np.float64), Y[rows, j].astype(np.float64)
        sk = Lasso(alpha=float(lam[j]), fit_intercept=True, tol=1e-10, max_iter=100000).fit(x, y)
        ours = lasso_objective(x, y, sol.weights[j], sol.bias[j], float(lam[j]))
        ref = lasso_objective(x, y, sk.coef_, sk.intercept_, float(lam[j]))
        assert (ours - ref) / ref <= 1e-3, (j, ours, ref)
        if targets[j] < n:
            assert sol.weights[j, targets[j]] == 0.0  # its own column is all zero on its rows


@pytest.mark.parametrize("own_rows", [True, False])
def test_path_matches_sklearn_at_every_lambda(own_rows):
    """The warm-started path (each step started on the line through the last two solutions) reaches
    scikit-learn's objective at every λ, for targets on their own rows (data form) and on all (Gram form)."""
    from sklearn.linear_model import lasso_path as sk_path

    rng = np.random.default_rng(3)
    m, n, n_test = 400, 40, 3
    masks, Y, _, _ = planted(rng, m, n, n_test, noise=1.0)
    targets = [0, 11, 23] if own_rows else [n, n + 1, n + 2]
    Y = Y[:, targets]
    D = target_rows(masks, n + n_test)[:, targets] if own_rows else None
    steps = list(lasso_path(masks, Y, D, n_lambdas=12, lambda_min_ratio=1e-3, tol=1e-6))
    assert len(steps) == 12
    ratios = lambda_ratios(12, 1e-3)
    for j in range(len(targets)):
        keep = D[:, j] if own_rows else slice(None)
        x, y = masks[keep].astype(np.float64), Y[keep, j].astype(np.float64)
        lams = np.array([s.lam[j] for s in steps], np.float64)
        np.testing.assert_allclose(lams / lams[0], ratios, rtol=1e-5)
        _, coefs, _ = sk_path(x - x.mean(0), y - y.mean(), alphas=lams, tol=1e-10, max_iter=100000)
        for k, s in enumerate(steps):
            w = coefs[:, k]
            ref = lasso_objective(x, y, w, y.mean() - x.mean(0) @ w, float(lams[k]))
            ours = lasso_objective(x, y, s.weights[j], s.bias[j], float(lams[k]))
            assert (ours - ref) / ref <= 1e-4, (j, k, ours, ref)


def test_path_start_extends_the_line_through_the_last_two_solutions():
    import torch

    ratios = np.array([1.0, 0.5, 0.25, 0.125])
    W_prev, W = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 2.0]])
    assert torch.equal(path_start(W, None, ratios, 1), W) and torch.equal(path_start(W, W_prev, ratios, 1), W)
    # λ went 0.5 → 0.25 while W moved by (1, 0); the next λ step (0.25 → 0.125) is half as long
    assert torch.allclose(path_start(W, W_prev, ratios, 3), torch.tensor([[1.5, 2.0]]))


def test_solver_default_tolerance_is_close_to_sklearn():
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(2)
    masks, Y, _, _ = planted(rng, 300, 40, 2, noise=1.0)
    Y = Y[:, 40:]
    lam = lambda_max(masks, Y) * 0.1
    sol = solve_lasso(masks, Y, lam)  # default tol=1e-4, Gram form (shared rows)
    for j in range(2):
        sk = Lasso(alpha=float(lam[j]), tol=1e-10, max_iter=100000).fit(masks.astype(float), Y[:, j])
        ours = lasso_objective(masks, Y[:, j], sol.weights[j], sol.bias[j], float(lam[j]))
        ref = lasso_objective(masks, Y[:, j], sk.coef_, sk.intercept_, float(lam[j]))
        assert (ours - ref) / ref <= 1e-3


# ----- (d) λ_max ----------------------------------------------------------------------------
def test_lambda_max_gives_all_zero_weights():
    rng = np.random.default_rng(3)
    masks, Y, _, _ = planted(rng, 200, 30, 4)
    D = target_rows(masks, 34)
    lmax = lambda_max(masks, Y, D)
    at = solve_lasso(masks, Y, lmax * 1.0001, D)
    assert np.all(at.weights == 0)
    # the intercept is then the mean over each target's own rows
    means = np.array([Y[D[:, j], j].mean() for j in range(34)])
    np.testing.assert_allclose(at.bias, means, rtol=1e-4, atol=1e-4)
    below = solve_lasso(masks, Y, lmax * 0.9, D)
    assert ((below.weights != 0).sum(1) >= 1).all()


# ----- (b) planted model: support, sign and λ selection ------------------------------------------
def test_planted_sparse_model_recovered_and_lambda_selected():
    rng = np.random.default_rng(4)
    m, n, n_test = 800, 50, 10
    masks, Y, W, b = planted(rng, m, n, n_test, k=4, noise=0.3)
    dm = fit_datamodels(masks, Y, n, n_lambdas=20, seed=0)
    T = n + n_test
    assert dm.weights.shape == (T, n) and dm.bias.shape == (T,) and dm.n_models_fit == m
    for j in range(T):
        true = np.flatnonzero(W[j])
        top = np.argsort(-np.abs(dm.weights[j]))[: len(true)]
        assert set(top) == set(true), j
        assert np.all(np.sign(dm.weights[j, true]) == np.sign(W[j, true]))
        assert np.abs(np.delete(dm.weights[j], true)).max() < 0.2  # anything else is small
    # λ selection: low validation MSE (noise var 0.09) vs the intercept-only model at λ_max
    assert np.mean(dm.val_mse) < 0.09 * 1.3 and np.all(dm.val_mse < 0.09 * 2.5)  # ~40-80 val models each
    # every target's chosen λ explains most of its variance (intercept-only MSE is noise + signal variance)
    assert np.all(dm.val_mse < 0.5 * dm.val_mse_path[:, 0])
    assert np.all((dm.lam_ratio < 1) & (dm.lam_ratio > 1e-3))
    np.testing.assert_allclose(dm.val_mse, np.nanmin(dm.val_mse_path, axis=1), rtol=1e-6)
    np.testing.assert_allclose(dm.lam, dm.lam_max * dm.lam_ratio, rtol=1e-5)
    # early stop: targets leave the path once their validation MSE stalls, so fewer are solved at the end
    active_per_step = [row[1] for row in dm.info["per_step"]]
    assert min(active_per_step) < max(active_per_step)
    # refit on all models and predictions
    pred = dm.predict(masks[:5])
    np.testing.assert_allclose(pred, masks[:5].astype(np.float32) @ dm.weights.T + dm.bias, rtol=1e-5, atol=1e-5)


def test_no_signal_target_chooses_lambda_max():
    rng = np.random.default_rng(5)
    masks = random_masks(rng, 400, 30)
    Y = rng.standard_normal((400, 31)).astype(np.float32)  # pure noise: nothing to learn
    Y[:, 30] = masks[:, :5].sum(1) + 0.1 * Y[:, 30]        # one test target with signal
    dm = fit_datamodels(masks, Y, 30, n_lambdas=12)
    assert (dm.weights[30, :5] > 0.5).all()
    # argmin on 40 validation models lets some noise targets pick a small λ by chance;
    # the one-standard-error rule keeps them strongly regularised
    dm = fit_datamodels(masks, Y, 30, n_lambdas=12, selection="1se")
    assert (dm.weights[30, :5] > 0.5).all()
    assert np.mean(dm.lam_ratio[:30] > 0.3) > 0.8
    assert np.mean((dm.weights[:30] != 0).sum(1)) < 2
    assert np.abs(dm.weights[:30]).sum(1).max() < 0.25 * np.abs(dm.weights[30]).sum()


def test_select_lambda_rules():
    from audit.datamodels import select_lambda

    mse = np.array([[1.0, 0.5, 0.45, 0.44, np.nan], [1.0, 1.1, 1.2, np.nan, np.nan]])
    se = np.full_like(mse, 0.05)
    assert select_lambda(mse, se, "min").tolist() == [3, 0]
    assert select_lambda(mse, se, "1se").tolist() == [2, 0]  # 0.45 <= 0.44 + 0.05 < 0.5
    with pytest.raises(AuditError):
        select_lambda(mse, se, "best")


# ----- (c) train targets never learn from models that contained them ------------------------------
def test_train_target_ignores_rows_that_include_it():
    rng = np.random.default_rng(6)
    n = 30
    masks, Y, _, _ = planted(rng, 400, n, 3)
    corrupt = Y.copy()
    j = 4
    corrupt[masks[:, j], j] = 1e3 * rng.standard_normal(masks[:, j].sum())  # rows that include target j
    a = fit_datamodels(masks, Y, n, n_lambdas=10)
    b = fit_datamodels(masks, corrupt, n, n_lambdas=10)
    np.testing.assert_allclose(b.weights[j], a.weights[j], atol=1e-5)
    assert b.bias[j] == pytest.approx(a.bias[j], abs=1e-5)
    assert a.weights[j, j] == 0 and a.n_rows[j] == (~masks[:, j]).sum()
    # control: the same corruption on rows the target does use changes its fit
    c_rows = Y.copy()
    c_rows[~masks[:, j], j] += 3.0 * masks[~masks[:, j], 0]
    c = fit_datamodels(masks, c_rows, n, n_lambdas=10)
    assert abs(c.weights[j, 0] - a.weights[j, 0]) > 1.0


def test_non_finite_rows_are_dropped_and_bad_input_refused():
    rng = np.random.default_rng(7)
    masks, Y, _, _ = planted(rng, 120, 20, 2)
    Y[3, 5] = np.nan
    dm = fit_datamodels(masks, Y, 20, n_lambdas=5)
    assert dm.n_models_fit == 119 and dm.info["n_models_dropped"] == 1 and np.isfinite(dm.weights).all()
    with pytest.raises(AuditError):
        fit_datamodels(masks, Y, 21)
    with pytest.raises(AuditError):
        fit_datamodels(masks[:5], Y[:5], 20)


# ----- (e) difference of means ------------------------------------------------------------------
def test_difference_of_means_matches_brute_force_and_planted():
    rng = np.random.default_rng(8)
    n = 25
    masks, Y, W, _ = planted(rng, 3000, n, 5, k=3, noise=0.2)
    dom = difference_of_means(masks, Y, n)
    assert dom.shape == (n + 5, n)
    for j in (0, 3, n, n + 4):
        rows = ~masks[:, j] if j < n else np.ones(len(masks), bool)
        for k in (1, 2, 10):
            x, y = masks[rows, k], Y[rows, j]
            want = 0.0 if k == j else y[x].mean() - y[~x].mean()
            assert dom[j, k] == pytest.approx(want, abs=1e-4)
    assert np.all(np.diag(dom[:n]) == 0)
    # planted: the influence estimates follow the true weights (fixed-size subsets shift each by
    # −Σ_l w_l/(n−1), tiny here)
    corr = [np.corrcoef(dom[j], W[j])[0, 1] for j in range(n + 5)]
    assert min(corr) > 0.9


# ----- (f) evaluation ---------------------------------------------------------------------------
def test_spearman_columns_matches_scipy_with_ties_and_masks():
    rng = np.random.default_rng(9)
    a = rng.integers(0, 5, (60, 4)).astype(float)  # many ties
    b = a + rng.standard_normal((60, 4))
    valid = rng.random((60, 4)) > 0.3
    got = spearman_columns(a, b, valid)
    for j in range(4):
        assert got[j] == pytest.approx(spearmanr(a[valid[:, j], j], b[valid[:, j], j])[0], abs=1e-10)
    const = spearman_columns(np.ones((10, 1)), rng.standard_normal((10, 1)))
    assert np.isnan(const[0])


def test_datamodels_beat_difference_of_means():
    rng = np.random.default_rng(10)
    n, n_test = 100, 20
    masks, Y, W, b = planted(rng, 1200, n, n_test, k=5, noise=0.5)
    fit_m, eval_m = masks[:1000], masks[1000:]
    dm = fit_datamodels(fit_m, Y[:1000], n, n_lambdas=16)
    base = difference_of_means(fit_m, Y[:1000], n)
    result, per_target = evaluate(dm, eval_m, Y[1000:], n, baseline_weights=base)
    for group in ("all", "train", "test"):
        g = result[group]
        assert g["lds_mean"] > g["baseline_lds_mean"] + 0.02, (group, g)
    assert result["all"]["n_targets"] == n + n_test and result["train"]["n_targets"] == n
    assert result["lds_mean"] == result["all"]["lds_mean"] and result["noise_floor_mse"] is None
    assert per_target["lds"].shape == (n + n_test,) and np.isfinite(per_target["mse"]).all()
    # train targets are scored only on held-out models that exclude them
    assert (per_target["n_eval_models"][:n] == (~eval_m).sum(0)).all()
    assert (per_target["n_eval_models"][n:] == 200).all()
    import json

    json.dumps(result)  # plain JSON


def test_evaluate_noise_floor_and_undefined_spearman():
    rng = np.random.default_rng(11)
    n, n_test, m, R = 20, 3, 50, 2
    masks = random_masks(rng, m, n)
    W = np.zeros((n + n_test, n), np.float32)
    W[:, 1:4] = 1.0
    W[np.arange(n), np.arange(n)] = 0.0
    W[n + 2] = 0.0  # constant predictions -> undefined Spearman
    bias = np.zeros(n + n_test, np.float32)
    dm = Datamodels(weights=W, bias=bias, lam=np.zeros(n + n_test), val_mse=np.zeros(n + n_test),
                    lam_ratio=np.zeros(n + n_test), n_models_fit=0, n_train=n)
    expected = masks.astype(np.float32) @ W.T + rng.standard_normal((m, 1))  # measured mean = this
    a = 0.5
    reps = np.stack([expected - a, expected + a], axis=1)  # within-subset variance 2a² (ddof=1)
    result, per_target = evaluate(dm, masks, None, n, margins_replicates=reps)
    assert result["replicates"] == R
    np.testing.assert_allclose(per_target["noise_floor_mse"], a * a, rtol=1e-9)  # 2a² / R
    assert result["noise_floor_mse"] == pytest.approx(a * a)
    assert result["all"]["n_lds_undefined"] == 1 and np.isnan(per_target["lds"][n + 2])
    assert result["test"]["n_lds"] == 2
    # the mean over R is what is measured: mse = mean of the common offset², not a² + ...
    off = (expected - masks.astype(np.float32) @ W.T)[:, 0]
    want = [np.mean(off[~masks[:, j]] ** 2) for j in range(n)] + [np.mean(off ** 2)] * n_test
    np.testing.assert_allclose(per_target["mse"], want, rtol=1e-5)


# ----- (g) save / load ------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(12)
    masks, Y, _, _ = planted(rng, 150, 15, 3)
    dm = fit_datamodels(masks, Y, 15, n_lambdas=6)
    dm.save(tmp_path / "dm.npz")
    back = Datamodels.load(tmp_path / "dm.npz")
    for key in ("weights", "bias", "lam", "val_mse", "lam_ratio", "lam_max", "n_rows", "ratios", "val_mse_path"):
        np.testing.assert_array_equal(getattr(back, key), getattr(dm, key), err_msg=key)
    assert back.n_models_fit == dm.n_models_fit and back.n_train == 15
    assert back.info["n_lambdas"] == 6
    np.testing.assert_array_equal(back.predict(masks), dm.predict(masks))
    with np.load(tmp_path / "dm.npz") as z:
        assert {"weights", "bias", "lam", "val_mse"} <= set(z.files)


# ----- (h) streamed fit: memory maps, a memory budget, blocks of models and of targets -----------------
def _objectives(dm, masks, Y, n):
    """Each target's Lasso objective (on its own rows) at the datamodel's weights and its λ."""
    rows = target_rows(masks, Y.shape[1])
    out = []
    for j in range(Y.shape[1]):
        r = rows[:, j]
        out.append(lasso_objective(masks[r], Y[r, j], dm.weights[j], dm.bias[j], float(dm.lam[j])))
    return np.array(out)


@pytest.mark.parametrize("memory_gb, held_as", [(3e-5, "uint8"), (4e-6, "source")])
def test_streamed_fit_equals_dense(tmp_path, memory_gb, held_as):
    rng = np.random.default_rng(21)
    n, n_test = 30, 4
    masks, Y, _, _ = planted(rng, 400, n, n_test)
    Y[11, 3] = np.inf  # a diverged model: dropped on both paths
    np.save(tmp_path / "masks.npy", masks)
    np.save(tmp_path / "margins.npy", Y.astype(np.float16))  # the release's dtype, converted per block
    mm_masks = np.load(tmp_path / "masks.npy", mmap_mode="r")
    mm_margins = np.load(tmp_path / "margins.npy", mmap_mode="r")
    Y16 = Y.astype(np.float16).astype(np.float32)
    dense = fit_datamodels(masks, Y16, n, n_lambdas=8)
    streamed = fit_datamodels(mm_masks, mm_margins, n, n_lambdas=8, memory_gb=memory_gb)
    assert dense.info["masks_held_as"] == "float32" and streamed.info["masks_held_as"] == held_as
    assert streamed.info["n_chunks"] > dense.info["n_chunks"]  # blocks of targets too
    assert streamed.n_models_fit == dense.n_models_fit == 399
    keep = np.isfinite(Y16).all(1)
    np.testing.assert_array_equal(streamed.lam_ratio, dense.lam_ratio)
    a, b = _objectives(dense, masks[keep], Y16[keep], n), _objectives(streamed, masks[keep], Y16[keep], n)
    # the same objective: blocking changes only the order of float32 sums (worst target 1.06e-6 on an AMD
    # EPYC, below 1e-6 on the Intel machine before it, unchanged with tol=1e-9: float32 order, not convergence)
    assert np.max(np.abs(a - b) / a) < 3e-6
    np.testing.assert_allclose(streamed.weights, dense.weights, atol=1e-3)


def test_fit_rows_and_target_range_select_models_and_targets():
    rng = np.random.default_rng(22)
    n, n_test = 20, 3
    masks, Y, _, _ = planted(rng, 300, n, n_test)
    rows = np.arange(0, 300, 2)
    whole = fit_datamodels(masks[rows], Y[rows], n, n_lambdas=6)
    part = fit_datamodels(masks, Y, n, rows=rows, targets=slice(15, 22), n_lambdas=6)
    assert part.weights.shape == (7, n) and part.info["targets"] == [15, 22] and part.n_models_fit == 150
    np.testing.assert_allclose(part.weights, whole.weights[15:22], atol=1e-4)
    np.testing.assert_allclose(part.bias, whole.bias[15:22], atol=1e-4)
    assert (part.weights[np.arange(5), np.arange(15, 20)] == 0).all()  # train targets 15..19 keep their own 0


def test_large_weights_do_not_cost_the_solver_its_precision():
    """A prediction whose mean (x̄·w) is far larger than the residual: the gap still reaches 1e-6 of the variance."""
    rng = np.random.default_rng(23)
    n, m = 60, 600
    masks = random_masks(rng, m, n)
    w = np.zeros(n, np.float32)
    w[:20] = 5.0  # x̄·w ≈ 50, residual sd 0.3
    Y = (masks.astype(np.float32) @ w + 3.0 + 0.3 * rng.standard_normal(m)).astype(np.float32)[:, None]
    lam = lambda_max(masks, Y) * 0.01
    sol = solve_lasso(masks, Y, lam, np.ones_like(Y, bool) & (rng.random((m, 1)) < 0.8), tol=1e-6, max_iter=3000)
    assert sol.converged.all() and sol.n_iter.max() < 500, sol.n_iter


def test_uint8_masks_count_any_non_zero_as_in_the_subset_and_bad_ranges_are_refused():
    rng = np.random.default_rng(24)
    n = 20
    masks, Y, _, _ = planted(rng, 200, n, 2)
    as_bool = fit_datamodels(masks, Y, n, n_lambdas=5)
    twos = fit_datamodels(masks.astype(np.uint8) * 2, Y, n, n_lambdas=5, memory_gb=1e-5)  # held as uint8
    assert twos.info["masks_held_as"] == "uint8" and (twos.n_rows == as_bool.n_rows).all()
    np.testing.assert_allclose(twos.weights, as_bool.weights, atol=1e-3)
    for bad in ({"targets": slice(0, 10, 2)}, {"targets": slice(30, 40)}, {"rows": np.array([0, 500])},
                {"rows": np.ones(7, bool)}):
        with pytest.raises(AuditError):
            fit_datamodels(masks, Y, n, n_lambdas=5, **bad)
    half = fit_datamodels(masks, Y, n, n_lambdas=5, rows=np.arange(200) % 2 == 0)  # a boolean mask of models
    assert half.n_models_fit == 100


def test_default_memory_budget_is_half_available_at_most_a_quarter_of_the_machine(monkeypatch, tmp_path):
    import io

    from audit import datamodels as dm_module

    monkeypatch.setattr(dm_module, "CGROUP_LIMITS", (str(tmp_path / "none"),))  # not in a limited container

    def meminfo(total_gib: float, available_gib: float):
        text = f"MemTotal: {int(total_gib * 2**20)} kB\nMemFree: 1 kB\nMemAvailable: {int(available_gib * 2**20)} kB\n"
        return lambda path, *a, **k: io.StringIO(text) if path == "/proc/meminfo" else open(path, *a, **k)

    monkeypatch.setattr(dm_module, "open", meminfo(16, 14), raising=False)
    assert dm_module.memory_budget() == 4 * 2**30  # a quarter of 16 GiB, below half of the 14 available
    monkeypatch.setattr(dm_module, "open", meminfo(16, 3), raising=False)
    assert dm_module.memory_budget() == 1.5 * 2**30  # half of what is available when little is
    assert dm_module.memory_budget(0.5) == 2**29  # --memory-gb wins
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(AuditError, match="--memory-gb must be a positive number of GiB"):
            dm_module.memory_budget(bad)
    # in a container limited to 8 GiB on a 256 GiB host, the container is the machine
    (tmp_path / "memory.max").write_text(f"{8 * 2**30}\n")
    monkeypatch.setattr(dm_module, "CGROUP_LIMITS", (str(tmp_path / "memory.max"),))
    monkeypatch.setattr(dm_module, "open", meminfo(256, 250), raising=False)
    assert dm_module.memory_budget() == 2 * 2**30
    (tmp_path / "memory.max").write_text("max\n")  # cgroup v2 without a limit
    assert dm_module.memory_budget() == 64 * 2**30
