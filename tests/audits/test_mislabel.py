import json

import numpy as np
import pytest

from audit.audits.mislabel import run_mislabel, wrong_classes
from audit.errors import AuditError


def test_wrong_class_is_the_likeliest_other_class():
    logits = np.array([[5.0, 4.0, 1.0], [5.0, 4.0, 1.0], [0.0, 0.0, 9.0]])
    assert list(wrong_classes(logits, np.array([0, 1, 2]))) == [1, 0, 0]
    with pytest.raises(AuditError):
        wrong_classes(logits, np.array([0, 1]))


def test_mislabel_relabels_instead_of_removing(audit_run, digits):
    from audit.reference import load_reference

    s = run_mislabel(audit_run, n=3, T=2, k_grid=[2, 8], block_size=32, dataset=digits)
    assert s["mode"] == "relabel" and s["json"].endswith("mislabel.json")
    out = json.loads((audit_run / "audits" / "mislabel.json").read_text())
    ref = load_reference(audit_run)
    for r in out["targets"]:
        want = wrong_classes(ref.mean_logits[digits.n_train + r["target"]][None], np.array([r["label"]]))[0]
        assert r["wrong_class"] == want != r["label"]
        for res in r["methods"].values():
            if res["k_star"] is not None:
                assert res["certified"] == (res["verify_margin"] < 0)
    assert "wrong_class_name" in (audit_run / "audits" / "mislabel.csv").read_text().splitlines()[0]
    # the saved plan relabels (never removes) each list's examples, to its target's wrong class
    (grid_dir,) = (audit_run / "retrain").glob("mislabel-grid-*")
    with np.load(grid_dir / "plan.npz") as z:
        labels = z["list_label"].reshape(3, 3)
    assert (labels == np.array([r["wrong_class"] for r in out["targets"]])[:, None]).all()
    # and no list holds an example already labelled with that class (its relabelling would change nothing)
    with np.load(grid_dir / "plan.npz") as z:
        lists = z["lists"].reshape(3, 3, -1)
    y = np.asarray(digits.y_train)
    for t, r in enumerate(out["targets"]):
        assert not (y[lists[t][lists[t] >= 0]] == r["wrong_class"]).any()
    assert not (audit_run / "audits" / "brittleness.json").exists()
    # the datamodels rank by their embeddings when relabelling, and each certified record names what it edited
    assert s["datamodel_ranking"] == out["summary"]["datamodel_ranking"] == "embedding"
    from audit import pipeline
    from audit.audits.support import datamodel_neighbours, without_no_op_flips

    tgt = np.array([r["target"] for r in out["targets"]])
    wrong = np.array([r["wrong_class"] for r in out["targets"]])
    K = lists.shape[2]
    near = datamodel_neighbours(pipeline.load_datamodels(audit_run).weights, digits.n_train + tgt, digits.n_train, 2 * K)
    assert (lists[:, 0] == without_no_op_flips(near, y, wrong, K)).all()
    for t, r in enumerate(out["targets"]):
        for m, res in enumerate(r["methods"].values()):
            assert res["edited"] == (lists[t, m, :res["verify_k"]].tolist() if res["certified"] else None)
    from audit.audits.support import MISLABEL as step, SupportResult

    lines = [b.text for b in step.summary(SupportResult.from_json(out["summary"])) if hasattr(b, "text")]
    assert "datamodels ranked by their nearest datamodel embeddings (cosine) (--datamodel-ranking)" in lines
    # a finding lists the examples its search relabelled, as recorded (here: made certified by hand)
    from audit.audits.support import MISLABEL

    first = out["targets"][0]
    first["methods"]["datamodels"].update(certified=True, certified_support=2, verify_k=2, k_star=1.5,
                                          edited=lists[0, 0, :2].tolist())
    (audit_run / "audits" / "mislabel.json").write_text(json.dumps(out))
    (finding,) = [f for f in MISLABEL.findings(audit_run) if f.index == first["target"]]
    assert finding.related == lists[0, 0, :2].tolist() and finding.details["ranking"] == "datamodels"


def test_the_weight_ranking_can_be_chosen_for_relabelling(audit_run, digits):
    s = run_mislabel(audit_run, n=2, T=1, k_grid=[4], block_size=32, dataset=digits, methods=["datamodels"],
                     datamodel_ranking="weights")
    assert s["datamodel_ranking"] == "weights"
    (grid_dir,) = (audit_run / "retrain").glob("mislabel-grid-*")
    with np.load(grid_dir / "plan.npz") as z:
        lists = z["lists"].reshape(2, -1)
    from audit import pipeline
    from audit.audits.support import datamodel_ranking, without_no_op_flips

    out = json.loads((audit_run / "audits" / "mislabel.json").read_text())
    tgt = np.array([r["target"] for r in out["targets"]])
    w = pipeline.load_datamodels(audit_run).weights[digits.n_train + tgt]
    want = without_no_op_flips(datamodel_ranking(w, 2 * lists.shape[1]), digits.y_train,
                               np.array([r["wrong_class"] for r in out["targets"]]), lists.shape[1])
    assert (lists == want).all()


def test_without_no_op_flips_skips_examples_already_of_the_wrong_class():
    from audit.audits.support import without_no_op_flips

    y_train = np.array([0, 1, 2, 1, 0, 2])
    lists = np.array([[1, 0, 3, 4, 2], [5, 2, -1, 0, 1]])
    out = without_no_op_flips(lists, y_train, np.array([1, 2]), 3)
    assert out.tolist() == [[0, 4, 2], [0, 1, -1]]
    assert without_no_op_flips(lists[:, :2], y_train, np.array([1, 2]), 3).tolist() == [[0, -1, -1], [-1, -1, -1]]
