import numpy as np
import pytest

from audit.errors import AuditError, InternalError
from audit.retrain import REMOVE, RetrainPlan, RetrainStore, job_dir, run_plan, train_pending
from audit.training.mlp import MLPTrainer
from tests.conftest import FAST_MLP

N_TRAIN, N_TEST = 1297, 500
TINY_MLP = {**FAST_MLP, "hidden": 16, "epochs": 1, "batch_size": 128}  # what is tested does not need good models


def make_plan():
    """Two targets: list 0 removes, list 1 relabels to class 3; ks 0, 1, 3; two replicates."""
    lists = np.array([[5, 9, 2, 7], [5, 9, 2, 7]])
    rows = [(l, k, r, N_TRAIN + t) for l, t in ((0, 0), (1, 1)) for k in (0, 1, 3) for r in (0, 1)]
    rows += [(0, 2, 0, N_TRAIN + 0)]
    req = np.array(rows)
    return RetrainPlan.build(lists, np.array([REMOVE, 3]), req[:, 0], req[:, 1], req[:, 2], req[:, 3])


def test_plan_shares_jobs_between_identical_models():
    plan = make_plan()
    assert plan.n_rows == 13
    # k=0 rows of both lists are the same two (unedited) models; the rest are distinct
    assert plan.n_jobs == 2 + 2 * 2 * 2 + 1
    assert plan.row_job[0] == plan.row_job[6] and plan.row_job[1] == plan.row_job[7]
    masks, labels = plan.edits(np.arange(plan.n_jobs), np.zeros(N_TRAIN, dtype=np.int64))
    removed = [set(np.flatnonzero(~m)) for m in masks]
    relabelled = [set(np.flatnonzero(lab == 3)) for lab in labels]
    by_job = {(int(plan.job_list[j]), int(plan.job_k[j])): j for j in range(plan.n_jobs)}
    assert removed[by_job[(0, 3)]] == {5, 9, 2} and relabelled[by_job[(0, 3)]] == set()
    assert removed[by_job[(1, 1)]] == set() and relabelled[by_job[(1, 1)]] == {5}
    assert removed[by_job[(0, 0)]] == set() and relabelled[by_job[(0, 0)]] == set()
    assert plan.edits(np.array([by_job[(0, 3)]]), np.zeros(N_TRAIN, dtype=np.int64))[1] is None  # remove only


def test_padding_and_bad_rows():
    plan = RetrainPlan.build(np.array([[4, -1, -1]]), np.array([REMOVE]), [0, 0, 0], [1, 2, 3], [0, 0, 0], [0, 0, 0])
    assert plan.n_jobs == 1  # -1 padding edits nothing more: k=1,2,3 are one model
    with pytest.raises(InternalError, match="k must"):  # plans are built by the audits: a bad one is a bug
        RetrainPlan.build(np.array([[4, 1]]), np.array([REMOVE]), [0], [3], [0], [0])


class CountingTrainer(MLPTrainer):
    """The MLP trainer that records how many models it trains, and can fail after n blocks."""

    def __init__(self, fail_after: int | None = None):
        super().__init__(**TINY_MLP)
        self.trained, self.blocks, self.fail_after = 0, 0, fail_after

    def train_block(self, dataset, masks, seeds, labels=None, progress=None):
        if self.fail_after is not None and self.blocks >= self.fail_after:
            raise KeyboardInterrupt("stopped")
        self.blocks += 1
        self.trained += len(seeds)
        return super().train_block(dataset, masks, seeds, labels)


def _run(root, plan, digits, trainer):
    kw = dict(seed=0, trainer_config=trainer.config(), fingerprint=digits.fingerprint(), block_size=4)
    return run_plan(root, "t", plan, digits, trainer, **kw)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, digits):
    plan = make_plan()
    full, n_full = _run(tmp_path / "a", plan, digits, CountingTrainer())
    assert n_full == plan.n_jobs and np.isfinite(full).all()
    # the two k=0 models are shared: both targets' rows come from the same model
    first = CountingTrainer(fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", plan, digits, first)
    assert first.trained == 4
    path = job_dir(tmp_path / "b", "t", plan, seed=0, trainer=first.config(), fingerprint=digits.fingerprint(),
                   block_size=4)
    done = np.load(path / "done.npy")
    assert done.sum() == 4 and done[:4].all()
    again = CountingTrainer()
    resumed, n_now = _run(tmp_path / "b", plan, digits, again)
    assert n_now == again.trained == plan.n_jobs - 4  # nothing trained twice
    assert np.array_equal(full, resumed)
    third = CountingTrainer()
    assert np.array_equal(_run(tmp_path / "b", plan, digits, third)[0], full) and third.trained == 0
    _assert_margins_match_a_direct_training(plan, full, digits)


def _assert_margins_match_a_direct_training(plan, margins, digits):
    """Row margins are the row target's margin of the edited model (here: relabel 5, 9, 2 to class 3)."""
    from audit.retrain import STREAM_RETRAIN
    from audit.seeding import model_seed
    from audit.training.base import correct_class_margins

    job = int(np.flatnonzero((plan.job_list == 1) & (plan.job_k == 3) & (plan.job_rep == 1))[0])
    m, lab = plan.edits(np.array([job]), digits.y_train)
    assert lab is not None and (lab[0, [5, 9, 2]] == 3).all() and m.all()
    model = MLPTrainer(**TINY_MLP).train_block(digits, m, [model_seed(0, STREAM_RETRAIN, 1)], lab)
    direct = correct_class_margins(model.logits(digits.x_test[1:2]), digits.y_test[1:2])[0, 0]
    row = int(np.flatnonzero(plan.row_job == job)[0])
    assert margins[row] == pytest.approx(direct, abs=1e-4)


def test_other_plan_other_dir_and_clash_is_an_error(tmp_path, digits):
    plan = make_plan()
    other = RetrainPlan.build(plan.lists, plan.list_label, [0], [1], [0], [N_TRAIN])
    kw = dict(seed=0, trainer={"name": "mlp"}, fingerprint="x", block_size=4)
    assert job_dir(tmp_path, "t", plan, **kw) != job_dir(tmp_path, "t", other, **kw)
    assert job_dir(tmp_path, "t", plan, **kw) != job_dir(tmp_path, "t", plan, **{**kw, "seed": 1})
    RetrainStore.open_or_create(tmp_path / "j", plan, **kw)
    assert RetrainStore.open_or_create(tmp_path / "j", plan, **kw).plan.n_jobs == plan.n_jobs
    with pytest.raises(AuditError, match="other settings"):
        RetrainStore.open_or_create(tmp_path / "j", other, **kw)


def test_a_claimed_block_is_left_to_its_owner(tmp_path, digits):
    from audit.store import claim_block

    plan = make_plan()
    store = RetrainStore.open_or_create(tmp_path / "j", plan, seed=0, trainer={"name": "mlp"},
                                        fingerprint=digits.fingerprint(), block_size=4)
    # another holder of block 0's claim (its own lock file handle, as another process would have)
    with claim_block(tmp_path / "j", 0) as mine:
        assert mine
        trainer = CountingTrainer()
        train_pending(store, digits, trainer)
        assert trainer.trained == plan.n_jobs - 4 and not np.asarray(store.done)[:4].any()
    # run_plan trains what it can, then refuses to return a table with another holder's rows missing
    trainer = CountingTrainer()
    held = job_dir(tmp_path / "k", "t", plan, seed=0, trainer=trainer.config(), fingerprint=digits.fingerprint(),
                   block_size=4)
    with claim_block(held, 0), pytest.raises(AuditError, match="another process"):
        _run(tmp_path / "k", plan, digits, trainer)
    assert trainer.trained == plan.n_jobs - 4


def test_ray_retraining_equals_local(tmp_path, digits, local_ray):
    """The retraining blocks sent as Ray tasks (the driver writes the rows) give the local engine's rows."""
    plan = make_plan()
    trainer = MLPTrainer(**TINY_MLP)
    local, n_local = _run(tmp_path / "local", plan, digits, trainer)
    kw = dict(seed=0, trainer_config=trainer.config(), fingerprint=digits.fingerprint(), block_size=4)
    remote, n_remote = run_plan(tmp_path / "ray", "t", plan, digits, trainer.config(), engine="ray", **kw)
    assert n_local == n_remote == plan.n_jobs and local_ray.is_initialized()
    np.testing.assert_allclose(remote, local, rtol=1e-4, atol=1e-4)
    again, n_again = run_plan(tmp_path / "ray", "t", plan, digits, trainer.config(), engine="ray", **kw)
    assert n_again == 0 and np.array_equal(again, remote)  # resumed: nothing retrained


def test_finished_rows_of_any_plan_are_found_by_what_their_model_is(tmp_path, digits):
    """run_rows trains only the models no job dir has finished: same edit, replicate, seed, trainer and data."""
    from audit.retrain import finished_margins, run_rows

    trainer = {"name": "mlp", **TINY_MLP}
    plan = make_plan()
    meta = dict(seed=0, trainer=trainer, fingerprint=digits.fingerprint())
    store = RetrainStore.open_or_create(tmp_path / "other-audit", plan, block_size=4, **meta)
    done = np.array([0, 1, plan.row_job[12]])  # finished by hand with known margins: no training needed to test the lookup
    rows = np.flatnonzero(np.isin(plan.row_job, done))
    store.write_jobs(done, rows, rows.astype(np.float32) + 0.5)
    found = finished_margins(tmp_path, **meta)
    keys = plan.job_keys()
    assert found == {(keys[plan.row_job[r]], int(plan.row_target[r])): r + 0.5 for r in rows}
    assert finished_margins(tmp_path, **{**meta, "seed": 1}) == {}
    assert finished_margins(tmp_path, **{**meta, "trainer": {**trainer, "epochs": 2}}) == {}
    # another plan asking, in another order and padding, for the same removals: answered without training
    lists = np.array([[9, 5, -1, -1]])  # the same set {5, 9} as make_plan's list 0 at k = 2
    asked = [(0, 2, 0, N_TRAIN), (0, 0, 1, N_TRAIN + 1), (0, 0, 0, N_TRAIN)]
    a = np.array(asked)
    margins, trained, reused = run_rows(tmp_path, "asker", lists, np.array([REMOVE]), a[:, 0], a[:, 1], a[:, 2],
                                        a[:, 3], digits, MLPTrainer(**TINY_MLP), block_size=4, trainer_config=trainer,
                                        seed=0, fingerprint=digits.fingerprint())
    expect = [found[(keys[plan.row_job[12]], N_TRAIN)], found[(keys[plan.row_job[7]], N_TRAIN + 1)],
              found[(keys[plan.row_job[0]], N_TRAIN)]]
    assert trained == 0 and reused == 3 and margins.tolist() == expect
    assert not (tmp_path / "asker").exists() and len(list(tmp_path.glob("asker-*"))) == 0
