"""Fitting time of the batched torch LASSO versus scikit-learn's Lasso, same problems, same λ.

Problem: a finished run's masks and margins (default: a fresh digits-sized synthetic run
if no run is given). For a slice of targets (train targets, which use only the models that
excluded them, and test targets) λ_j = r · λ_max(j); we solve every target of the slice
in one batch and scikit-learn solves them one by one (coordinate descent, tol 1e-4 as
ours). Prints seconds per target for each, the ratio, and the relative objective gap
(ours − sklearn) / sklearn, worst over the slice.

``--path``: the full λ path instead of one λ — λ_j,k = λ_max(j)·r_k for ``--n-lambdas`` ratios
r_k log-spaced from 1 to ``--lambda-min-ratio`` (as `audit fit`, without its early stop).
Ours: ``lasso_path`` (every target in one batch, warm-started from one λ to the next);
scikit-learn: ``lasso_path`` per target on its own rows (centred, so without intercept it is
the same objective), warm-started along the same λ, ``precompute`` as given (auto: the Gram
matrix when it pays). The gap is the worst over every target and every λ.

    python benchmarks/fit_vs_sklearn.py [--run runs/digits] [--targets 200] [--ratio 0.05]
    python benchmarks/fit_vs_sklearn.py --path [--n-lambdas 24] [--lambda-min-ratio 1e-3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def load_problem(run: str | None, m: int, n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(masks [m, n], margins [m, n + n_test], n_train) from a run, or synthetic (sparse model + noise)."""
    if run:
        from audit.store import RunStore

        store = RunStore.open(run)
        rows = store.finished_rows()
        return np.asarray(store.masks[rows]), np.asarray(store.margins[rows]), store.config.n_train
    rng = np.random.default_rng(seed)
    masks = np.zeros((m, n), bool)
    order = np.argsort(rng.random((m, n)), axis=1)
    np.put_along_axis(masks, order[:, : n // 2], True, axis=1)
    W = np.zeros((n + n_test, n), np.float32)
    for j in range(n + n_test):
        W[j, rng.choice(n, 20, replace=False)] = rng.normal(0, 0.3, 20)
    Y = masks @ W.T + rng.normal(0, 1.0, (m, n + n_test)).astype(np.float32)
    return masks, Y.astype(np.float32), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run directory with trained models (default: synthetic, digits-sized)")
    ap.add_argument("--models", type=int, default=4000, help="synthetic: models")
    ap.add_argument("--n-train", type=int, default=1297, help="synthetic: training examples")
    ap.add_argument("--targets", type=int, default=100, help="targets in the slice (half train, half test)")
    ap.add_argument("--ratio", type=float, default=0.05, help="λ / λ_max")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--path", action="store_true", help="the full λ path instead of one λ")
    ap.add_argument("--n-lambdas", type=int, default=24)
    ap.add_argument("--lambda-min-ratio", type=float, default=1e-3)
    ap.add_argument("--precompute", default="auto", choices=["auto", "true", "false"],
                    help="scikit-learn's lasso_path precompute (path mode)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.path:
        path_main(args)
        return

    from sklearn.linear_model import Lasso

    from audit.datamodels import lambda_max, lasso_objective, solve_lasso, target_rows

    masks, margins, n = load_problem(args.run, args.models, args.n_train, 500, seed=0)
    T = margins.shape[1]
    half = args.targets // 2
    slice_ = np.r_[np.linspace(0, n - 1, half).astype(int), np.linspace(n, T - 1, args.targets - half).astype(int)]
    Y = margins[:, slice_]
    D = target_rows(masks, T)[:, slice_]
    lam = lambda_max(masks, Y, D) * args.ratio

    t0 = time.perf_counter()
    sol = solve_lasso(masks, Y, lam, D, tol=1e-4)
    ours = time.perf_counter() - t0

    objs, t_sk = [], 0.0
    for j in range(len(slice_)):
        rows = D[:, j]
        x, y = masks[rows].astype(np.float64), Y[rows, j].astype(np.float64)
        t0 = time.perf_counter()
        sk = Lasso(alpha=float(lam[j]), tol=1e-4, max_iter=10000).fit(x, y)
        t_sk += time.perf_counter() - t0
        a = lasso_objective(x, y, sol.weights[j], sol.bias[j], float(lam[j]))
        b = lasso_objective(x, y, sk.coef_, sk.intercept_, float(lam[j]))
        objs.append((a - b) / b)
    gap = max(objs)
    k = len(slice_)
    print(f"problem: {masks.shape[0]} models x {n} train examples, {k} targets ({half} train, {k - half} test), "
          f"λ = {args.ratio} λ_max, {torch.get_num_threads()} threads")
    print(f"torch FISTA (batched): {ours / k * 1e3:8.2f} ms/target  ({ours:.2f} s, converged {sol.converged.mean():.0%})")
    print(f"sklearn Lasso (loop):  {t_sk / k * 1e3:8.2f} ms/target  ({t_sk:.2f} s)")
    print(f"speed-up: {t_sk / ours:.1f}x   worst relative objective gap (ours - sklearn)/sklearn: {gap:+.2e}")


def path_main(args) -> None:
    """The full λ path: ours batched and warm-started vs scikit-learn's lasso_path per target."""
    from sklearn.linear_model import lasso_path as sk_path

    from audit.datamodels import lambda_max, lambda_ratios, lasso_objective, lasso_path, target_rows

    masks, margins, n = load_problem(args.run, args.models, args.n_train, 500, seed=0)
    T = margins.shape[1]
    half = args.targets // 2
    slice_ = np.r_[np.linspace(0, n - 1, half).astype(int), np.linspace(n, T - 1, args.targets - half).astype(int)]
    Y = margins[:, slice_]
    D = target_rows(masks, T)[:, slice_]
    ratios = lambda_ratios(args.n_lambdas, args.lambda_min_ratio)
    lmax = lambda_max(masks, Y, D)
    t0 = time.perf_counter()
    steps = list(lasso_path(masks, Y, D, n_lambdas=args.n_lambdas, lambda_min_ratio=args.lambda_min_ratio, tol=1e-4))
    ours = time.perf_counter() - t0
    precompute = {"auto": "auto", "true": True, "false": False}[args.precompute]
    gaps, t_sk = [], 0.0
    for j in range(len(slice_)):
        rows = D[:, j]
        x, y = masks[rows].astype(np.float64), Y[rows, j].astype(np.float64)
        xm, ym = x.mean(0), y.mean()
        alphas = (lmax[j] * ratios).astype(np.float64)
        t1 = time.perf_counter()
        _, coefs, _ = sk_path(x - xm, y - ym, alphas=alphas, tol=1e-4, max_iter=10000, precompute=precompute)
        t_sk += time.perf_counter() - t1
        for k, step in enumerate(steps):
            a = lasso_objective(x, y, step.weights[j], step.bias[j], float(step.lam[j]))
            w = coefs[:, k]
            b = lasso_objective(x, y, w, ym - xm @ w, float(step.lam[j]))
            gaps.append((a - b) / b)
    k = len(slice_)
    print(f"problem: {masks.shape[0]} models x {n} train examples, {k} targets ({half} train, {k - half} test), "
          f"full path of {args.n_lambdas} λ from λ_max to {args.lambda_min_ratio:g} λ_max, "
          f"{torch.get_num_threads()} threads, sklearn precompute={args.precompute}")
    print(f"torch FISTA path (batched): {ours / k * 1e3:8.2f} ms/target  ({ours:.2f} s)")
    print(f"sklearn lasso_path (loop):  {t_sk / k * 1e3:8.2f} ms/target  ({t_sk:.2f} s)")
    print(f"speed-up: {t_sk / ours:.1f}x   worst relative objective gap over targets and λ: {max(gaps):+.2e}; "
          f"median {np.median(gaps):+.2e}")


if __name__ == "__main__":
    main()
