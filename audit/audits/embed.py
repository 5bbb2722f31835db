"""Datamodel embeddings (Ilyas et al. 2022, §4.3): principal components and spectral clusters.

A target's datamodel embedding is its row of datamodel weights, normalised to unit length
(§4.3): two targets are close when the same training examples raise and lower their margins.

- **PCA** (§4.3.2): fitted on the train targets' embeddings, applied to train and test. For
  each top component, the train and test images with the most positive and the most negative
  coordinates (paper Fig. 14) show what the direction separates. The explained-variance curve
  is set beside that of the representation (the full-data reference models' penultimate
  features, RUN/reference.npz, when the run has them; App. Fig. 43): "components for 50% / 90%
  of the variance" says how many directions each needs. The paper finds that a few directions
  explain most of the representation's variance while datamodel embeddings need many more.
- **Spectral clustering** (§4.3.1, App. I): scikit-learn's ``SpectralClustering`` with an RBF
  affinity on the test targets' coordinates on the computed principal components (the full
  rows are as wide as the training set; the top components keep most of their variance, and the
  result says how much), ``k`` clusters, a fixed ``random_state``.

Memory rule (``--memory-gb``, the budget B): weight rows are read ``CHUNK`` at a time, so
the datamodel file may be memory-mapped and is never copied whole.

- *Dense, exact*: when the train embeddings are small (min(n, width) ≤ ``DENSE_MAX`` and
  4 × n × width × 8 bytes ≤ B: a float64 copy, the centred copy and the SVD factors), they are
  held dense and the full spectrum is computed (LAPACK SVD through ``sklearn.decomposition.PCA``).
- *Sparse, truncated*: otherwise they are held as a CSR matrix of their non-zero weights (8 bytes
  per non-zero; datamodels are LASSO fits, so most weights are zero), which must fit in B / 2,
  and ``PCA(svd_solver="arpack")`` computes the top ``--max-components`` components with
  implicit centring (no dense copy). Component counts beyond the computed ones are reported as
  "more than N".
- Test embeddings are projected a chunk at a time; the clustering's RBF affinity matrix
  (n_test² × 8 bytes, about three copies while the spectral embedding is computed) must fit in B.

Files: audits/embed.json (the typed result), audits/embed_clusters.csv (cluster of each test
target), audits/embed_train.npy and audits/embed_test.npy (float32 coordinates of the train
and test targets on the saved components) and audits/embed_variance.npy (the explained
variance ratio of every computed component), for reuse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit import pipeline
from audit.contract import Block, Line, Result, Step, Table, file_stamp, setting
from audit.data.dataset import Dataset
from audit.datamodels import memory_budget
from audit.release import require_weights
from audit.errors import AuditError
from audit.jsonio import output_file, write_csv, write_json
from audit.lazy import sparse as sp
from audit.progress import SILENT, Progress
from audit.reference import REFERENCE_FILE, load_reference

if TYPE_CHECKING:
    from sklearn.decomposition import PCA

CHUNK = 1024  # weight rows read at a time
DENSE_MAX = 4000  # exact full-spectrum PCA only up to this many samples or features
AFFINITY_COPIES = 3  # n_test² float64 matrices alive while SpectralClustering runs
GAMMA_SAMPLE = 2000  # test targets whose pairwise distances set the RBF width
SPARSE_PRODUCT = 0.25  # project a chunk as CSR when fewer than this share of its weights are non-zero
LEVELS = (0.5, 0.9)  # variance fractions whose component counts are reported


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of the datamodel-embedding audit."""

    components: int = setting(5, "--components", "top principal components whose most positive and most negative "
                                                  "train and test images are listed")
    per_end: int = setting(6, "--per-end", "images listed at each end (most positive, most negative) of a component")
    clusters: int = setting(10, "--clusters", "k: spectral clusters of the test targets' datamodel embeddings (>= 2)")
    max_components: int = setting(100, "--max-components", "principal components kept: their coordinates are saved "
                                                           "and the clusters are computed on them")
    memory_gb: float | None = setting(None, "--memory-gb", "memory budget for the embeddings and the clustering's "
                                                          "affinity matrix, GiB (dense exact PCA when it fits, else "
                                                          "sparse truncated; default: half of the memory available, at most a quarter of the machine's)")
    cluster_seed: int = setting(0, "--cluster-seed", "random_state of the PCA solver and the spectral clustering",
                                minimum=0)


# ----- typed result ------------------------------------------------------------------------------
class Extreme(Result):
    index: int
    label: int
    label_name: str
    coordinate: float


class ComponentEnds(Result):
    """One principal component: its share of the variance and the images at either end."""

    component: int  # 0-based
    variance_ratio: float
    train_positive: list[Extreme]
    train_negative: list[Extreme]
    test_positive: list[Extreme]
    test_negative: list[Extreme]


class Spectrum(Result):
    """An explained-variance spectrum and the component counts that reach 50% and 90% of the variance."""

    n_samples: int
    width: int
    computed: int  # components computed (the whole spectrum when exact)
    exact: bool
    ratios: list[float]  # explained variance ratio per computed component
    components_50: int | None  # None: more than ``computed`` are needed
    components_90: int | None

    def count_label(self, level: float) -> str:
        n = self.components_50 if level == 0.5 else self.components_90
        return str(n) if n is not None else f"> {self.computed}"


class ClusterSummary(Result):
    cluster: int
    size: int
    class_counts: dict[str, int]  # class name -> test targets, most first
    majority: str
    purity: float  # share of the majority class
    examples: list[int]  # test indices closest to the cluster's mean, nearest first


class EmbedResult(Result):
    """audits/embed.json."""

    n_train: int
    n_test: int
    method: str  # how the PCA was computed, in words (the memory rule's branch)
    zero_train_rows: int  # train targets without any non-zero weight (their embedding stays zero)
    zero_test_rows: int
    datamodels: Spectrum
    representation: Spectrum | None
    representation_note: str  # why the representation curve is absent, or what it is
    saved_components: int
    top: list[ComponentEnds]
    k: int
    gamma: float
    cluster_space: str
    clusters: list[ClusterSummary]
    seconds: float


# ----- embeddings ----------------------------------------------------------------------------------
def normalise_rows(w: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero. Returns (rows, number of zero rows)."""
    w = np.asarray(w, dtype=np.float32)
    norms = np.linalg.norm(w, axis=1)
    zero = norms == 0
    return (w / np.where(zero, 1.0, norms)[:, None]).astype(np.float32), int(zero.sum())


def dense_fits(n: int, width: int, budget: float) -> bool:
    """The memory rule's dense branch: exact PCA of an n × width matrix within ``budget`` bytes."""
    return min(n, width) <= DENSE_MAX and 4 * n * width * 8 <= budget


def read_embeddings(weights: Any, rows: np.ndarray, budget: float, *, dense: bool,
                    progress: Progress = SILENT, what: str = "train") -> tuple[np.ndarray | sp.csr_matrix, int]:
    """Normalised embeddings of ``rows`` of ``weights`` (read ``CHUNK`` rows at a time), dense or as CSR.

    The CSR form must fit in half of ``budget`` bytes (8 bytes per non-zero), else AuditError.
    """
    parts: list[Any] = []
    zeros, nnz = 0, 0
    with progress.task(f"embed: reading {what} embeddings", total=len(rows), unit="targets") as bar:
        for start in range(0, len(rows), CHUNK):
            block, z = normalise_rows(weights[rows[start:start + CHUNK]])
            zeros += z
            if dense:
                parts.append(block)
            else:
                block = sp.csr_matrix(block)
                nnz += block.nnz
                if nnz * 8 > budget / 2:
                    raise AuditError(f"the {what} embeddings have more than {nnz:,} non-zero weights "
                                     f"({nnz * 8 / 2**30:.3g} GiB), over half the memory budget of "
                                     f"{budget / 2**30:.3g} GiB; "
                                     "raise --memory-gb")
                parts.append(block)
            bar.advance(len(block) if dense else block.shape[0])
    width = int(weights.shape[1])
    if not parts:
        return (np.zeros((0, width), np.float32) if dense else sp.csr_matrix((0, width), dtype=np.float32)), 0
    return (np.concatenate(parts) if dense else sp.vstack(parts, format="csr")), zeros


def components_for(ratios: np.ndarray, level: float) -> int | None:
    """Fewest leading components whose explained variance reaches ``level`` (None: the computed ones do not)."""
    cum = np.cumsum(np.asarray(ratios, dtype=np.float64))
    hit = np.flatnonzero(cum >= level - 1e-9)
    return int(hit[0]) + 1 if hit.size else None


def spectrum(pca: PCA, n: int, width: int, exact: bool) -> Spectrum:
    ratios = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
    return Spectrum(n_samples=n, width=width, computed=len(ratios), exact=exact, ratios=[float(r) for r in ratios],
                    components_50=components_for(ratios, LEVELS[0]), components_90=components_for(ratios, LEVELS[1]))


def fit_pca(x: np.ndarray | sp.csr_matrix, max_components: int, seed: int,
            exact: bool | None = None) -> tuple[PCA, bool]:
    """PCA of ``x``: the full spectrum when ``exact`` (default: when ``x`` is dense), else the top
    ``max_components`` by ARPACK (dense or sparse ``x``; a sparse one is centred implicitly). Returns (pca, exact)."""
    n, width = x.shape
    if n < 2:
        raise AuditError(f"PCA needs at least 2 train targets, got {n}")
    from sklearn.decomposition import PCA

    if (not sp.issparse(x)) if exact is None else exact:
        return PCA(svd_solver="full").fit(x), True
    k = min(max_components, n - 1, width - 1)
    if k < 1:
        raise AuditError(f"the embeddings are {n} × {width}: too small for a truncated PCA")
    return PCA(n_components=k, svd_solver="arpack", random_state=seed).fit(x), False


def coordinates(pca: PCA, x: np.ndarray | sp.csr_matrix, n_keep: int) -> np.ndarray:
    """Coordinates of embeddings ``x`` (normalised rows, dense or CSR) on the first ``n_keep`` components (float32)."""
    basis = pca.components_[:n_keep].astype(np.float64)
    if not sp.issparse(x) and np.count_nonzero(x) < SPARSE_PRODUCT * x.size:  # LASSO rows: a sparse product is cheaper
        x = sp.csr_matrix(x)
    return (np.asarray(x @ basis.T) - pca.mean_.astype(np.float64) @ basis.T).astype(np.float32)


def project(pca: PCA, weights: Any, rows: np.ndarray, n_keep: int) -> tuple[np.ndarray, int]:
    """Coordinates of the normalised embeddings of ``rows`` of ``weights`` (read ``CHUNK`` at a time) on the first
    ``n_keep`` components (float32), and the number of those rows without any non-zero weight."""
    out = np.zeros((len(rows), n_keep), dtype=np.float32)
    zeros = 0
    for start in range(0, len(rows), CHUNK):
        block, z = normalise_rows(weights[rows[start:start + CHUNK]])
        out[start:start + len(block)] = coordinates(pca, block, n_keep)
        zeros += z
    return out, zeros


def extremes(coords: np.ndarray, labels: np.ndarray, classes: list[str], n: int) -> tuple[list[Extreme], list[Extreme]]:
    """The ``n`` most positive (largest first) and most negative (smallest first) rows of one coordinate
    (ties: the lower index first)."""
    n = min(n, len(coords))

    def pick(idx: np.ndarray) -> list[Extreme]:
        return [Extreme(index=int(i), label=int(labels[i]), label_name=classes[int(labels[i])],
                        coordinate=float(coords[i])) for i in idx]

    return pick(np.argsort(-coords, kind="stable")[:n]), pick(np.argsort(coords, kind="stable")[:n])


# ----- clustering ----------------------------------------------------------------------------------
def rbf_gamma(x: np.ndarray, seed: int) -> float:
    """The RBF width: 1 / the median squared distance between (up to ``GAMMA_SAMPLE``) test embeddings."""
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= GAMMA_SAMPLE else x[rng.choice(len(x), GAMMA_SAMPLE, replace=False)]
    sq = (sample.astype(np.float64) ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * sample.astype(np.float64) @ sample.T.astype(np.float64), 0)
    off = d2[np.triu_indices(len(sample), 1)]
    med = float(np.median(off)) if off.size else 0.0
    return 1.0 / med if med > 0 else 1.0


def check_clusters(k: int, n: int, budget: float) -> None:
    """AuditError unless 2 <= k < n (the number of test targets) and the affinity matrix fits in ``budget`` bytes."""
    if k < 2:
        raise AuditError(f"--clusters must be at least 2 (got {k})")
    if k >= n:
        raise AuditError(f"--clusters {k} asks for at least as many clusters as there are test targets ({n})")
    need = AFFINITY_COPIES * n * n * 8
    if need > budget:
        raise AuditError(f"clustering {n} test targets needs about {need / 2**30:.3g} GiB for the affinity matrix, over "
                         f"the memory budget of {budget / 2**30:.3g} GiB; raise --memory-gb")


def spectral_clusters(x: np.ndarray, k: int, seed: int, budget: float) -> tuple[np.ndarray, float]:
    """Cluster ids (0..k-1) of the rows of ``x`` by SpectralClustering with an RBF affinity, and its gamma."""
    from sklearn.cluster import SpectralClustering

    check_clusters(k, len(x), budget)
    gamma = rbf_gamma(x, seed)
    model = SpectralClustering(n_clusters=k, affinity="rbf", gamma=gamma, random_state=seed, n_init=10)
    return model.fit_predict(x.astype(np.float64)).astype(np.int64), gamma


def summarise_clusters(ids: np.ndarray, x: np.ndarray, labels: np.ndarray, classes: list[str],
                       n_examples: int) -> list[ClusterSummary]:
    """Size, class mix and the members nearest the mean of each cluster, largest cluster first."""
    out = []
    for c in np.unique(ids):
        members = np.flatnonzero(ids == c)
        names, counts = np.unique(labels[members], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        mix = {classes[int(names[i])]: int(counts[i]) for i in order}
        dist = ((x[members] - x[members].mean(0)) ** 2).sum(1)
        near = members[np.argsort(dist, kind="stable")[:n_examples]]
        out.append(ClusterSummary(cluster=int(c), size=len(members), class_counts=mix,
                                  majority=classes[int(names[order[0]])], purity=float(counts[order[0]] / len(members)),
                                  examples=[int(i) for i in near]))
    return sorted(out, key=lambda s: (-s.size, s.cluster))


# ----- the audit -------------------------------------------------------------------------------------
def embed(weights: Any, ds: Dataset, config: EmbedConfig, *, features: np.ndarray | None = None,
          feature_note: str = "", progress: Progress = SILENT) -> tuple[EmbedResult, dict[str, np.ndarray], np.ndarray]:
    """PCA and spectral clusters of the datamodel embeddings ``weights`` [n_train + n_test, n_train].

    ``features``: the representation's train features (the reference models'), or None with
    ``feature_note`` saying why. Returns the result, the arrays to save and the test cluster ids.
    """
    start = time.perf_counter()
    for flag, value, low in (("--components", config.components, 1), ("--per-end", config.per_end, 1),
                             ("--max-components", config.max_components, 1), ("--cluster-seed", config.cluster_seed, 0)):
        if value < low:
            raise AuditError(f"{flag} must be at least {low} (got {value})")
    budget = memory_budget(config.memory_gb)
    n_train, n_test = ds.n_train, ds.n_test
    check_clusters(config.clusters, n_test, budget)  # before any work
    require_weights(weights, n_train + n_test)  # both splits' embeddings: an import of one split says so now
    dense = dense_fits(n_train, n_train, budget)
    x_train, zero_train = read_embeddings(weights, np.arange(n_train), budget, dense=dense, progress=progress)
    if zero_train == n_train:
        raise AuditError(f"none of the {n_train} train targets has a non-zero datamodel weight: there is nothing to "
                         "embed; fit on more models (`audit train --n-models`, then `audit fit`)")
    pca, exact = fit_pca(x_train, config.max_components, config.cluster_seed)
    dm_spec = spectrum(pca, n_train, n_train, exact)
    keep = min(config.max_components, dm_spec.computed)
    method = ("exact PCA of the dense train embeddings (full spectrum)" if exact else
              f"truncated PCA (ARPACK) of the sparse train embeddings ({x_train.nnz:,} non-zero weights), "
              f"top {dm_spec.computed} components")
    with progress.task("embed: projecting", total=2, unit="splits") as bar:
        train_xy = coordinates(pca, x_train, keep)  # the train embeddings are in memory already
        bar.advance(1)
        test_xy, zero_test = project(pca, weights, n_train + np.arange(n_test), keep)
        bar.advance(1)
    del x_train
    if zero_test == n_test:
        raise AuditError(f"none of the {n_test} test targets has a non-zero datamodel weight: there is nothing to "
                         "cluster; fit on more models (`audit train --n-models`, then `audit fit`)")
    y_train, y_test, classes = np.asarray(ds.y_train), np.asarray(ds.y_test), list(ds.classes)
    top = []
    for c in range(min(config.components, keep)):
        tp, tn = extremes(train_xy[:, c], y_train, classes, config.per_end)
        sp_, sn = extremes(test_xy[:, c], y_test, classes, config.per_end)
        top.append(ComponentEnds(component=c, variance_ratio=dm_spec.ratios[c], train_positive=tp, train_negative=tn,
                                 test_positive=sp_, test_negative=sn))
    rep = None
    if features is not None:
        feats = np.asarray(features, dtype=np.float32)
        rep_pca, rep_exact = fit_pca(feats, config.max_components, config.cluster_seed,
                                     exact=dense_fits(len(feats), feats.shape[1], budget))
        rep = spectrum(rep_pca, len(feats), feats.shape[1], rep_exact)
    with progress.task("embed: spectral clustering", total=1, unit="fits") as bar:
        ids, gamma = spectral_clusters(test_xy, config.clusters, config.cluster_seed, budget)
        bar.advance(1)
    held = float(np.sum(dm_spec.ratios[:keep]))
    clusters = summarise_clusters(ids, test_xy, y_test, classes, n_examples=12)
    result = EmbedResult(
        n_train=n_train, n_test=n_test, method=method, zero_train_rows=zero_train, zero_test_rows=zero_test,
        datamodels=dm_spec, representation=rep, representation_note=feature_note, saved_components=keep, top=top,
        k=config.clusters, gamma=gamma,
        cluster_space=(f"test targets' coordinates on the top {keep} principal components of the train embeddings "
                       f"(which hold {held:.1%} of their variance); RBF affinity exp(-gamma·d²), gamma = 1 / the "
                       "median squared distance"),
        clusters=clusters, seconds=round(time.perf_counter() - start, 2))
    arrays = {"train": train_xy, "test": test_xy, "variance": np.asarray(dm_spec.ratios, dtype=np.float64)}
    return result, arrays, ids


def _save_npy(path: Path, array: np.ndarray) -> None:
    with output_file(path, binary=True) as fh:
        np.save(fh, array)


class EmbedStep(Step[EmbedConfig, EmbedResult]):
    """Datamodel embeddings: principal components and spectral clusters (paper §4.3)."""

    name, title = "embed", "Datamodel embeddings"
    config_type, result_type = EmbedConfig, EmbedResult
    files = {"result": "audits/embed.json", "clusters": "audits/embed_clusters.csv",
             "train": "audits/embed_train.npy", "test": "audits/embed_test.npy",
             "variance": "audits/embed_variance.npy"}
    needs = (pipeline.FIT,)

    def input_digests(self, run_dir: Path) -> dict:
        """The fit's digest plus the reference models' file (its stamp): reference models trained or retrained
        later (by `audit brittleness` or `audit leakage`) change the representation curve."""
        return {**super().input_digests(run_dir), "reference": file_stamp(Path(run_dir) / REFERENCE_FILE)}

    def compute(self, run_dir: Path, config: EmbedConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> EmbedResult:
        store, dm, ds = pipeline.open_fitted(run_dir, dataset)
        ref = load_reference(run_dir)
        if ref is None:
            features, note = None, ("no representation curve: the run has no reference models (RUN/reference.npz; "
                                    "`audit brittleness` or `audit leakage` trains them)")
        elif len(ref.features) != ds.n_train + ds.n_test:
            features, note = None, (f"no representation curve: RUN/reference.npz has {len(ref.features)} rows, not "
                                    f"{ds.n_train + ds.n_test}; it is from another run")
        else:
            features = ref.train_features(ds.n_train)
            note = (f"penultimate features of {ref.n_models} full-data reference models (unit rows per model, "
                    "concatenated)")
        result, arrays, ids = embed(dm.weights, ds, config, features=features, feature_note=note, progress=progress)
        for role in ("train", "test", "variance"):
            _save_npy(self.path(run_dir, role), arrays[role])
        classes = list(ds.classes)
        write_csv(self.path(run_dir, "clusters"),
                  ({"test_index": i, "label": int(ds.y_test[i]), "label_name": classes[int(ds.y_test[i])],
                    "cluster": int(ids[i])} for i in range(ds.n_test)),
                  ["test_index", "label", "label_name", "cluster"])
        write_json(self.path(run_dir), result.to_json())
        return result

    def summary(self, r: EmbedResult) -> list[Block]:
        rows = [("datamodel embeddings", f"{r.datamodels.n_samples} × {r.datamodels.width}",
                 r.datamodels.count_label(0.5), r.datamodels.count_label(0.9))]
        if r.representation is not None:
            rows.append(("representation", f"{r.representation.n_samples} × {r.representation.width}",
                         r.representation.count_label(0.5), r.representation.count_label(0.9)))
        out: list[Block] = [Table("principal components needed for 50% and 90% of the variance (train targets)",
                                  ("embedding", "samples × width", "50%", "90%"), tuple(rows), right_aligned=True)]
        if r.representation is None:
            out.append(Line(r.representation_note))
        out.append(Table(f"top principal components: share of variance and the classes at either end (train)",
                         ("component", "variance", "most positive", "most negative"),
                         tuple((str(c.component + 1), f"{c.variance_ratio:.1%}", _classes(c.train_positive),
                                _classes(c.train_negative)) for c in r.top)))
        out.append(Table(f"{r.k} spectral clusters of the {r.n_test} test targets", ("cluster", "size", "majority class",
                                                                                     "purity"),
                         tuple((str(c.cluster), str(c.size), c.majority, f"{c.purity:.0%}") for c in r.clusters),
                         right_aligned=True))
        out.append(Line(f"PCA: {r.method}; clusters on the {r.cluster_space}"))
        return out


def _classes(ends: list[Extreme]) -> str:
    """Class names at one end of a component (the report shows the images)."""
    return " ".join(e.label_name for e in ends)


EMBED = EmbedStep()
