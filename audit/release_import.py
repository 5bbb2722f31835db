"""`audit import`: make a run of a published datamodels release (audit.release) without copying it.

The run directory gets run.json (the dataset, N_train, N_test, α = PCT/100, the training models
M - E), release.json (each file's path and fingerprint), and the records of the train step (the
release's training models) and, when the release has its .pt files, of the fit step (the
published weights), so evaluate and every weight-only audit run on it as on a trained run.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from audit import pipeline
from audit.data import dataset_kind, load_dataset
from audit.errors import AuditError
from audit.jsonio import write_json
from audit.lazy import torch
from audit.mapped import drop_pages
from audit.release import RELEASE_JSON, WEIGHT_ROLES, Expected, check_release, load_pt, record_release
from audit.store import RUN_JSON, RunConfig
from audit.training.registry import DEFAULT_TRAINER, IMPORTED


def import_release(folder: Path | str, spec: str, run_dir: Path | str, *, pct: int = 50,
                   eval_models: int = 10000) -> dict:
    """Check the release in ``folder`` against the dataset ``spec`` and make the run ``run_dir``; returns
    release.json's content. AuditError (nothing written) for a mismatch or an existing run."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_JSON).exists():
        raise AuditError(f"{run_dir} already holds a run; import into a new --run")
    if eval_models < 0:
        raise AuditError(f"--eval-models must be 0 or more (got {eval_models})")
    spec = pipeline.absolute_spec(spec)
    ds = load_dataset(spec)
    content = check_release(Path(folder), pct, Expected(ds.name, ds.n_train, ds.n_test, ds.n_classes), eval_models)
    data = record_release(content)
    n_models = (content["n_models"] or 0) - (eval_models if content["n_models"] else 0)
    config = RunConfig(dataset=spec, fingerprint=ds.fingerprint(), n_train=ds.n_train, n_test=ds.n_test,
                       alpha=pct / 100, n_models=n_models, trainer={"name": IMPORTED,
                                                                    "trainer": DEFAULT_TRAINER[dataset_kind(spec)]})
    made = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / RELEASE_JSON, data)
        write_json(run_dir / RUN_JSON, asdict(config))
        write_json(pipeline.TRAIN.path(run_dir), {"n_models": n_models, "trained": n_models, "diverged": 0,
                                                  "pending": 0, "alpha": config.alpha, "dataset": spec})
        pipeline.TRAIN.note(run_dir, pipeline.TrainConfig())
        if any(r in content["files"] for r in WEIGHT_ROLES):
            write_json(pipeline.FIT.path(run_dir), _fit_summary(content, n_models, ds.n_train, ds.n_test))
            pipeline.FIT.note(run_dir, pipeline.FitConfig())
    except BaseException:
        for name in (RUN_JSON, RELEASE_JSON, pipeline.TRAIN_JSON, pipeline.FIT_JSON):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "steps", ignore_errors=True)
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return data


def _fit_summary(content: dict, n_models: int, n_train: int, n_test: int) -> dict:
    """fit.json of the published weights (their non-zero count read from the memory-mapped .pt files; the
    mean over the targets that have weights, ``splits`` says which)."""
    nonzero = 0
    roles = [r for r in WEIGHT_ROLES if r in content["files"]]
    weighted = sum(n_train if r == "train_weights" else n_test for r in roles)
    for role in roles:
        w = load_pt(Path(content["files"][role]))["weight"]
        step = max(1, 2**26 // max(1, w.shape[1] * w.element_size()))
        for r0 in range(0, w.shape[0], step):  # whole rows: the file front to back, 64 MB at a time
            nonzero += int(torch.count_nonzero(w[r0:r0 + step]))
            drop_pages(w)
    return {"n_models": n_models, "n_targets": n_train + n_test, "seconds": 0.0, "device": "published release",
            "mean_nonzero_weights": nonzero / max(1, weighted), "median_lambda_ratio": float("nan"),
            "mean_val_mse": float("nan"), "options": {"source": "release"},
            "splits": [r.split("_")[0] for r in roles]}
