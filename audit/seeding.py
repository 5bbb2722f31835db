"""Per-index seeding: model i's subset, initialisation and data order depend on (seed, i) only.

``SeedSequence(seed, spawn_key=(stream, kind, i))`` equals the i-th child of a spawned
sequence, so a resumed, re-blocked or Ray-sharded run draws exactly the same models.
"""

from __future__ import annotations

import numpy as np

MASK, MODEL = 0, 1

# the streams: one per kind of model or draw, so no two kinds ever share a seed
STREAM_MAIN = 0  # the run's subset models
STREAM_EVAL = 1  # held-out evaluation models
STREAM_REFERENCE = 2  # full-data reference models
STREAM_RETRAIN = 3  # retraining plans of the support audits
STREAM_TARGETS = 7  # the class-balanced sample of audited test targets (a draw, not models)
STREAM_COUNTERFACTUAL = 8  # the random removed sets of the counterfactual audit (a draw)


def sample_rng(seed: int, stream: int) -> np.random.Generator:
    """A generator for a draw that is not a model (e.g. which test targets an audit looks at)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


def _child(seed: int, stream: int, kind: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(stream, kind, index))


def subset_mask(seed: int, stream: int, subset: int, n: int, alpha: float) -> np.ndarray:
    """Bool mask of exactly floor(alpha*n) examples, uniformly random for this subset index."""
    rng = np.random.default_rng(_child(seed, stream, MASK, subset))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=int(np.floor(alpha * n)), replace=False)] = True
    return mask


def model_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit integer seed for model ``index``'s initialisation and data order."""
    state = _child(seed, stream, MODEL, index).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)
