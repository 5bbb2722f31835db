"""Label-error finding vs cleanlab on digits with planted label noise.

For each planted fraction: flip that fraction of digits' training labels (seeded,
audit.data.planting), train the run's subset models with the project's own pipeline
(default MLP recipe, α=0.5), and rank the training examples with
audit.audits.label_errors (each rule, on the first N models for each N in --counts).
cleanlab gets cross-validated predicted probabilities on the same noisy labels from

- ``mlp-cv``: the same MLP recipe (the run's trainer), 5-fold, once;
- ``mlp-cv-xR``: the same, R times with other folds and seeds, probabilities averaged
  (an ensemble, like ours, at a fraction of the models);
- ``svc``: scikit-learn's SVC (RBF, probability=True) on standardised pixels, 5-fold;
- ``sk-mlp``: scikit-learn's MLPClassifier (64 hidden units), 5-fold.

cleanlab's ranking is ``cleanlab.rank.get_label_quality_scores`` (self-confidence, its
default) and its flagged set ``cleanlab.filter.find_label_issues`` (defaults). Reported:
precision and recall of the top K (K = the planted count; at that K they are equal) and of
each method's flagged set. Writes $OUT/label_errors_vs_cleanlab.json (or --json).

    python benchmarks/label_errors_vs_cleanlab.py [--fractions 0.05,0.1] [--models 5000]
        [--counts 500,1000,2000,5000] [--seed 0] [--runs-dir DIR] [--cv-repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit import pipeline  # noqa: E402
from audit.audits import label_errors as le  # noqa: E402
from audit.data import load_dataset  # noqa: E402
from audit.data.planting import label_plant_options, planted_label_errors  # noqa: E402
from audit.store import RunStore  # noqa: E402
from audit.training.registry import make_trainer  # noqa: E402

FOLDS = 5
print = functools.partial(print, flush=True)  # noqa: A001 - progress shows when piped to a log


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return f"loadavg {os.getloadavg()}"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def folds(y: np.ndarray, seed: int) -> np.ndarray:
    """Fold id per example, stratified."""
    from sklearn.model_selection import StratifiedKFold

    out = np.empty(len(y), np.int64)
    for f, (_, test) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)):
        out[test] = f
    return out


def mlp_cv_probs(ds, trainer_config: dict, repeats: int, seed: int) -> list[np.ndarray]:
    """Cross-validated probabilities from the run's MLP recipe, one array per repeat."""
    options = {k: v for k, v in trainer_config.items() if k != "name"}
    trainer = make_trainer(trainer_config["name"], **options)
    out = []
    for r in range(repeats):
        fold = folds(ds.y_train, seed + r)
        masks = np.stack([fold != f for f in range(FOLDS)])
        models = trainer.train_block(ds, masks, [10_000 * (seed + 1) + FOLDS * r + f for f in range(FOLDS)])
        p = softmax(models.logits(ds.x_train).astype(np.float64))  # [F, N, C]
        out.append(p[fold, np.arange(len(fold))])
    return out


def sklearn_cv_probs(ds, name: str, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    import warnings

    warnings.filterwarnings("ignore", message=".*probability.*deprecated", category=FutureWarning)
    x = ds.x_train.reshape(ds.n_train, -1).astype(np.float64)
    clf = {"svc": SVC(probability=True, random_state=seed),
           "sk-mlp": MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed)}[name]
    cv = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    return cross_val_predict(make_pipeline(StandardScaler(), clf), x, ds.y_train, cv=cv, method="predict_proba")


def cleanlab_scores(y: np.ndarray, probs: np.ndarray, truth: np.ndarray) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(y, probs)
    order = np.lexsort((np.arange(len(y)), quality))
    flagged = find_label_issues(y, probs)
    out = le.planted_precision_recall(order, flagged, truth)
    out["cv_accuracy"] = float((probs.argmax(1) == y).mean())
    return out


def ours(store: RunStore, rows: np.ndarray, truth: np.ndarray, min_models: int) -> dict:
    stats = le.oos_margin_stats(store, rows=rows)
    res = {}
    flags = le.flag_mask(stats, min_models)
    majority = (stats.n_oos >= min_models) & (stats.frac_wrong > 0.5)
    likely = flags & (le.test_share(stats) <= le.LIKELY_TEST_SHARE)
    for rule in le.RULES:
        scores = le.label_error_scores(stats, rule, min_models)
        order = le.rank_examples(scores, stats)
        r = le.planted_precision_recall(order, flags, truth)
        r["majority_flag"] = le.planted_precision_recall(order, majority, truth)
        r["likely"] = le.planted_precision_recall(order, likely, truth)
        r["median_oos_models"] = float(np.median(stats.n_oos))
        res[rule] = r
    return res


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", default="0.05,0.1")
    ap.add_argument("--models", type=int, default=5000)
    ap.add_argument("--counts", default="500,1000,2000,5000")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-models", type=int, default=le.DEFAULT_MIN_MODELS)
    ap.add_argument("--cv-repeats", type=int, default=10)
    ap.add_argument("--replay", type=int, default=le.DEFAULT_REPLAY)
    ap.add_argument("--runs-dir", type=Path, default=None, help="keep (and reuse) the runs here")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(",")]
    counts = sorted({min(int(c), args.models) for c in args.counts.split(",")})
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="label_errors_bench_"))
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_start": load()},
              "settings": vars(args) | {"runs_dir": str(runs_dir), "json": str(args.json)}, "fractions": {}}
    print(f"machine: {report['machine']['load_start']}; {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")
    for frac in fractions:
        opts = label_plant_options(frac, args.seed)
        ds = load_dataset("digits", **opts)
        truth, original = planted_label_errors(ds)
        run_dir = runs_dir / f"digits_labels_{frac:g}_a{args.alpha:g}_s{args.seed}"
        t0 = time.perf_counter()
        summary = pipeline.train("digits", run_dir, n_models=args.models, alpha=args.alpha, seed=args.seed,
                                 dataset_options=opts, dataset=ds)
        train_s = time.perf_counter() - t0
        store = RunStore.open(run_dir, writable=False)
        finished = store.finished_rows()
        entry: dict = {"n_train": ds.n_train, "n_planted": int(len(truth)), "train_seconds_now": round(train_s, 1),
                       "train_summary": {k: summary[k] for k in ("trained", "diverged", "test_accuracy")},
                       "ours": {}, "cleanlab": {}}
        for n in counts:
            t0 = time.perf_counter()
            entry["ours"][str(n)] = ours(store, finished[:n], truth, args.min_models)
            entry.setdefault("ours_seconds", {})[str(n)] = round(time.perf_counter() - t0, 2)
        if args.replay:
            votes = le.replay_votes(store, ds, args.replay)
            other = le.best_other_class(votes.probs, ds.y_train)
            entry["predicted_class"] = {"n_replay": int(len(votes.rows)), "max_margin_diff": votes.max_margin_diff,
                                        "share_planted_true_class_recovered": float((other[truth] == original).mean())}
        t0 = time.perf_counter()
        mlp = mlp_cv_probs(ds, store.config.trainer, args.cv_repeats, args.seed)
        entry["cleanlab"]["mlp-cv"] = cleanlab_scores(ds.y_train, mlp[0], truth)
        if args.cv_repeats > 1:
            entry["cleanlab"][f"mlp-cv-x{args.cv_repeats}"] = cleanlab_scores(ds.y_train, np.mean(mlp, 0), truth)
        for name in ("svc", "sk-mlp"):
            entry["cleanlab"][name] = cleanlab_scores(ds.y_train, sklearn_cv_probs(ds, name, args.seed), truth)
        entry["cleanlab_seconds"] = round(time.perf_counter() - t0, 1)
        entry["load_after"] = load()
        report["fractions"][f"{frac:g}"] = entry
        print(f"\n== digits, {frac:.0%} labels flipped: {len(truth)} of {ds.n_train}; {len(finished)} models "
              f"(trained now {summary['trained_now']} in {train_s:.0f} s), test acc {summary['test_accuracy']:.3f}")
        print(f"{'top K = planted count':<40} {'P = R':>6}")
        for n in counts:
            for rule, r in entry["ours"][str(n)].items():
                print(f"{f'ours, rule {rule}, {n} models':<40} {fmt(r['precision_at_k']):>6}")
        for name, r in entry["cleanlab"].items():
            label = f"cleanlab, {name} (cv accuracy {r['cv_accuracy']:.3f})"
            print(f"{label:<40} {fmt(r['precision_at_k']):>6}")
        print(f"{'flagged sets':<40} {'n':>6} {'P':>6} {'R':>6}")

        def row(label: str, r: dict) -> None:
            print(f"{label:<40} {r['n_flagged']:>6} {fmt(r['flagged_precision']):>6} {fmt(r['flagged_recall']):>6}")

        for n in counts:
            r = entry["ours"][str(n)]["margin"]
            row(f"ours mean margin < 0, {n} models", r)
            row(f"ours likely (test share <= 1%), {n}", r["likely"])
            row(f"ours majority wrong, {n} models", r["majority_flag"])
        for name, r in entry["cleanlab"].items():
            row(f"cleanlab find_label_issues, {name}", r)
        if "predicted_class" in entry:
            print(f"predicted class of the planted flips = their original class: "
                  f"{entry['predicted_class']['share_planted_true_class_recovered']:.3f} "
                  f"({entry['predicted_class']['n_replay']} replayed models)")
        print(f"load: {entry['load_after']}")
    out = args.json or Path(os.environ.get("OUT", ".")) / "label_errors_vs_cleanlab.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
