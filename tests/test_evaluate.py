import numpy as np
import pytest
from sklearn import metrics as skm

from imprint.engine.errors import ImprintError
from imprint.engine.evaluate import attribution_metrics, join_truth, membership_metrics, tpr_at_fpr


def test_membership_metrics_hand_computed():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    d = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    m = membership_metrics(y, d, score=[9, 8, 7, 3, 6, 5, 4, 2, 1, 0])
    # tp=3 fp=1 fn=1 tn=5
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["specificity"] == pytest.approx(5 / 6)
    # AUC: positives 9,8,7,3 vs negatives 6,5,4,2,1,0 -> 3 positives beat all 6; '3' beats 3 of 6 -> (18+3)/24
    assert m["roc_auc"] == pytest.approx(21 / 24)
    # at FPR 0 the best TPR is 3/4 (threshold 7)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.75)


def test_tpr_at_fpr_matches_roc_curve_random():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500) + y
    fpr, tpr, _ = skm.roc_curve(y, s)
    assert tpr_at_fpr(y, s, 0.05) == pytest.approx(tpr[fpr <= 0.05].max())


def test_attribution_metrics_permutation_invariant():
    t = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    p = [2] * 5 + [0] * 5 + [1] * 5
    m = attribution_metrics(t, p)
    assert m["ari"] == pytest.approx(1.0) and m["nmi"] == pytest.approx(1.0)
    m2 = attribution_metrics(t, [0] * 15)
    assert m2["ari"] == pytest.approx(0.0)


def test_join_truth_suffix_and_errors():
    names, labels = join_truth({"x/1.png": 1, "2.png": 0}, {"root/x/1.png": "used", "root/2.png": "unused"})
    assert dict(zip(names, labels)) == {"x/1.png": "used", "2.png": "unused"}
    with pytest.raises(ImprintError):
        join_truth({"a.png": 1}, {"b.png": "used"})
    with pytest.raises(ImprintError):
        membership_metrics([], [])
