"""Fitting time of the batched torch LASSO versus scikit-learn's Lasso, same problems, same λ.

Problem: a finished run's masks and margins (default: a fresh digits-sized synthetic run
if no run is given). For a slice of targets (train targets, which use only the models that
excluded them, and test targets) λ_j = r · λ_max(j); we solve the slice as `audit fit` does (the
train targets in one batch on their own rows, the test targets in another in Gram form) and
scikit-learn solves them one by one (coordinate descent, tol 1e-4 as ours). Prints, per group and
overall, milliseconds per target for each, the ratio, and the relative objective gap
(ours − sklearn) / sklearn, worst and median over the slice.

``--path``: the full λ path instead of one λ — λ_j,k = λ_max(j)·r_k for ``--n-lambdas`` ratios
r_k log-spaced from 1 to ``--lambda-min-ratio`` (as `audit fit`, without its early stop).
Ours: ``lasso_path`` (each group in one batch, warm-started from one λ to the next);
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

    from audit.datamodels import lambda_max, lasso_objective, solve_lasso

    masks, margins, n = load_problem(args.run, args.models, args.n_train, 500, seed=0)
    rows = []
    for name, cols, D in target_groups(masks, margins, n, args.targets):
        Y = margins[:, cols]
        lam = lambda_max(masks, Y, D) * args.ratio
        t0 = time.perf_counter()
        sol = solve_lasso(masks, Y, lam, D, tol=1e-4)
        ours = time.perf_counter() - t0
        objs, t_sk = [], 0.0
        for j in range(len(cols)):
            x, y = own_rows(masks, Y[:, j], D, j)
            t0 = time.perf_counter()
            sk = Lasso(alpha=float(lam[j]), tol=1e-4, max_iter=10000).fit(x, y)
            t_sk += time.perf_counter() - t0
            a = lasso_objective(x, y, sol.weights[j], sol.bias[j], float(lam[j]))
            b = lasso_objective(x, y, sk.coef_, sk.intercept_, float(lam[j]))
            objs.append((a - b) / b)
        rows.append((name, len(cols), ours, t_sk, objs, f"converged {sol.converged.mean():.0%}"))
    print(f"problem: {masks.shape[0]} models x {n} train examples, λ = {args.ratio} λ_max, "
          f"{torch.get_num_threads()} threads")
    report(rows)


def target_groups(masks: np.ndarray, margins: np.ndarray, n: int, k: int) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """The slice as `audit fit` solves it: train targets in one batch on their own rows (the models that
    excluded them: data form), test targets in another on every model (Gram form)."""
    from audit.datamodels import target_rows

    half = k // 2
    train = np.linspace(0, n - 1, half).astype(int)
    test = np.linspace(n, margins.shape[1] - 1, k - half).astype(int)
    return [("train", train, target_rows(masks, margins.shape[1])[:, train]), ("test", test, None)]


def own_rows(masks: np.ndarray, y: np.ndarray, D: np.ndarray | None, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Target j's problem as scikit-learn gets it: its rows of the masks (float64) and of its margins."""
    keep = slice(None) if D is None else D[:, j]
    return masks[keep].astype(np.float64), y[keep].astype(np.float64)


def report(rows: list[tuple[str, int, float, float, list[float], str]]) -> None:
    """Per group and overall: ms per target for each solver, the speed-up, the worst and median objective gap."""
    for name, k, ours, t_sk, gaps, extra in [*rows, ("all", sum(r[1] for r in rows), sum(r[2] for r in rows),
                                                      sum(r[3] for r in rows), [g for r in rows for g in r[4]], "")]:
        print(f"{name:>5} ({k} targets): ours {ours / k * 1e3:8.2f} ms/target, scikit-learn {t_sk / k * 1e3:8.2f} "
              f"ms/target, speed-up {t_sk / ours:5.1f}x; relative objective gap (ours - sklearn)/sklearn worst "
              f"{max(gaps):+.2e}, median {np.median(gaps):+.2e} {extra}")


def path_main(args) -> None:
    """The full λ path: ours batched and warm-started vs scikit-learn's lasso_path per target."""
    from sklearn.linear_model import lasso_path as sk_path

    from audit.datamodels import lambda_max, lambda_ratios, lasso_objective, lasso_path

    masks, margins, n = load_problem(args.run, args.models, args.n_train, 500, seed=0)
    ratios = lambda_ratios(args.n_lambdas, args.lambda_min_ratio)
    precompute = {"auto": "auto", "true": True, "false": False}[args.precompute]
    rows = []
    for name, cols, D in target_groups(masks, margins, n, args.targets):
        Y = margins[:, cols]
        lmax = lambda_max(masks, Y, D)
        t0 = time.perf_counter()
        steps = list(lasso_path(masks, Y, D, n_lambdas=args.n_lambdas, lambda_min_ratio=args.lambda_min_ratio,
                                tol=1e-4))
        ours = time.perf_counter() - t0
        gaps, t_sk = [], 0.0
        for j in range(len(cols)):
            x, y = own_rows(masks, Y[:, j], D, j)
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
        iters = sum(float(st.n_iter.mean()) for st in steps)
        rows.append((name, len(cols), ours, t_sk, gaps, f"({iters:.0f} iterations per target)"))
    print(f"problem: {masks.shape[0]} models x {n} train examples, full path of {args.n_lambdas} λ from λ_max to "
          f"{args.lambda_min_ratio:g} λ_max, {torch.get_num_threads()} threads, sklearn precompute={args.precompute}")
    report(rows)

if __name__ == "__main__":
    main()
