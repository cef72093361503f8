import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from binllm import metrics


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    y = rng.integers(0, 2, n)
    s = rng.integers(-5, 6, n).astype(float) + 0.3 * y  # many ties
    assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def slow_uauc(u, y, s):
    vals, skipped = [], 0
    for user in np.unique(u):
        m = u == user
        if len(np.unique(y[m])) < 2:
            skipped += 1
            continue
        vals.append(roc_auc_score(y[m], s[m]))
    return np.mean(vals), len(vals), skipped


@pytest.mark.parametrize("seed", range(5))
def test_uauc_equals_per_user_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    u = rng.integers(0, 150, n)
    y = rng.integers(0, 2, n)
    s = np.round(rng.standard_normal(n) + 0.5 * y, 1)
    got = metrics.uauc(u, y, s)
    want = slow_uauc(u, y, s)
    assert got[0] == pytest.approx(want[0], abs=1e-12)
    assert got[1:] == want[1:]


def test_single_class_and_empty():
    assert np.isnan(metrics.auc([1, 1], [0.1, 0.2]))
    assert metrics.uauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3]) == (pytest.approx(np.nan, nan_ok=True), 0, 2)
    assert np.isnan(metrics.uauc([], [], [])[0])


def test_evaluate_warm_cold():
    u = np.array([1, 1, 2, 2, 3, 3])
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.6])
    w = np.array([True, True, True, True, False, False])
    r = metrics.evaluate(u, y, s, w)
    assert r["warm_rows"] == 4 and r["cold_rows"] == 2
    assert r["uauc"] == pytest.approx((1 + 0 + 1) / 3)
    assert r["cold_auc"] == 1.0
    assert "| method |" in metrics.table({"x": r})


def test_metric_bad_input():
    with pytest.raises(ValueError, match="scores must be finite"):
        metrics.auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="scores must have 2 entries"):
        metrics.auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="users must be 1-D"):
        metrics.uauc(np.zeros((2, 1)), [0, 1], [0.1, 0.2])


def test_uauc_vectorised_is_fast():
    # 1e6 rows: correctness on a big input (not a timing assertion)
    rng = np.random.default_rng(0)
    n = 1_000_000
    u = rng.integers(0, 20_000, n)
    y = rng.integers(0, 2, n)
    s = rng.standard_normal(n) + y
    v, used, skipped = metrics.uauc(u, y, s)
    assert 0.7 < v < 0.8 and used + skipped == len(np.unique(u))
