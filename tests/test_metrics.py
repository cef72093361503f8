import re
import time
from math import erf, sqrt

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


# ---------------------------------------------------------------- bootstrap intervals


def binormal(rng, n, mu, p_pos=0.4):
    """Labels ~ Bernoulli(p_pos), scores N(mu * y, 1): true AUC = Phi(mu / sqrt 2)."""
    y = (rng.random(n) < p_pos).astype(np.int64)
    return y, rng.standard_normal(n) + mu * y


def phi(x):
    return 0.5 * (1 + erf(x / sqrt(2)))


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_auc_equals_explicit_resampling(seed, ties):
    # oracle: draw row indices with the documented generator, score each materialised resample
    # with the sort-based auc (itself checked against sklearn above)
    rng = np.random.default_rng(100 + seed)
    n, n_boot = 120, 150
    y, s = binormal(rng, n, 0.7, p_pos=0.15)  # few positives, so some resamples may hold one class
    if ties:
        s = np.round(s)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    vals = np.array([metrics.auc(y[i], s[i]) for i in idx if 0 < y[i].sum() < n])
    want = np.quantile(vals, [0.05, 0.95])
    got = metrics.bootstrap_auc(y, s, n_boot=n_boot, seed=seed, level=0.9)
    assert got == pytest.approx(tuple(want), abs=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_bootstrap_uauc_resamples_users_explicitly(seed):
    rng = np.random.default_rng(200 + seed)
    n = 600
    u = rng.integers(0, 70, n) * 7  # non-contiguous user ids
    y, s = binormal(rng, n, 0.8)
    s = np.round(s, 1)
    per = np.array([metrics.auc(y[u == k], s[u == k]) for k in np.unique(u) if len(np.unique(y[u == k])) == 2])
    idx = np.random.default_rng(seed).integers(0, len(per), size=(300, len(per)))
    want = np.quantile(per[idx].mean(1), [0.025, 0.975])
    assert metrics.bootstrap_uauc(u, y, s, n_boot=300, seed=seed) == pytest.approx(tuple(want), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_intervals_contain_point_estimate(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    u = rng.integers(0, 100, n)
    y, s = binormal(rng, n, 0.5 + 0.3 * seed)
    lo, hi = metrics.bootstrap_auc(y, s)
    assert lo < metrics.auc(y, s) < hi
    lo, hi = metrics.bootstrap_uauc(u, y, s)
    assert lo < metrics.uauc(u, y, s)[0] < hi


def test_interval_width_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(7)
    widths = {}
    for n in (400, 6400):
        y, s = binormal(rng, n, 1.0)
        lo, hi = metrics.bootstrap_auc(y, s, n_boot=1000, seed=1)
        widths[n] = hi - lo
    assert 3.2 < widths[400] / widths[6400] < 5.0  # sqrt(6400 / 400) = 4


def test_perfect_and_reversed_scores_give_degenerate_intervals():
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1, 0, 1])
    s = y + np.linspace(0, 0.5, 10)
    u = np.repeat([1, 2], 5)
    assert metrics.bootstrap_auc(y, s) == (1.0, 1.0)
    assert metrics.bootstrap_auc(y, -s) == (0.0, 0.0)
    assert metrics.bootstrap_uauc(u, y, s) == (1.0, 1.0)


def test_paired_identical_scores_exactly_zero():
    rng = np.random.default_rng(3)
    n = 1500
    u = rng.integers(0, 80, n)
    y, s = binormal(rng, n, 0.6)
    d = metrics.paired_bootstrap(u, y, s, s.copy(), n_boot=500)
    for m in ("auc", "uauc"):
        assert d[f"{m}_diff"] == 0.0 and d[f"{m}_diff_lo"] == 0.0 and d[f"{m}_diff_hi"] == 0.0
        assert d[f"{m}_share_le0"] == 1.0 and d[f"{m}_boot_used"] == 500


def test_paired_bootstrap_matches_marginals_and_is_tighter():
    rng = np.random.default_rng(4)
    n = 3000
    u = rng.integers(0, 150, n)
    y, a = binormal(rng, n, 1.0)
    b = a + 0.3 * rng.standard_normal(n)  # a slightly worse, strongly correlated method
    d = metrics.paired_bootstrap(u, y, a, b, n_boot=500, seed=5)
    assert d["auc_a"] == metrics.auc(y, a) and d["auc_b"] == metrics.auc(y, b)
    assert d["uauc_a"] == metrics.uauc(u, y, a)[0] and d["uauc_b"] == metrics.uauc(u, y, b)[0]
    assert d["n_rows"] == n and d["n_users_uauc"] == metrics.uauc(u, y, a)[1]
    assert d["auc_diff_lo"] < d["auc_diff"] < d["auc_diff_hi"]
    assert d["auc_diff"] > 0 and d["auc_diff_lo"] > 0 and d["auc_share_le0"] < 0.025
    # same rows for both methods: the difference is far better determined than either AUC
    lo, hi = metrics.bootstrap_auc(y, a, n_boot=500, seed=5)
    assert d["auc_diff_hi"] - d["auc_diff_lo"] < 0.5 * (hi - lo)
    # swapping the methods mirrors everything
    r = metrics.paired_bootstrap(u, y, b, a, n_boot=500, seed=5)
    assert r["auc_diff"] == -d["auc_diff"]
    assert r["auc_diff_lo"] == pytest.approx(-d["auc_diff_hi"])
    assert r["uauc_diff_hi"] == pytest.approx(-d["uauc_diff_lo"])


def test_auc_interval_coverage_on_synthetic_data():
    # 200 data sets with a known population AUC; a 95% interval should cover it ~95% of the time
    rng = np.random.default_rng(11)
    mu = 1.2
    true = phi(mu / sqrt(2))
    hits = 0
    for k in range(200):
        y, s = binormal(rng, 150, mu)
        lo, hi = metrics.bootstrap_auc(y, s, n_boot=400, seed=k)
        hits += lo <= true <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_uauc_interval_coverage_with_user_effects():
    # users differ in how separable they are (mu_u); the estimand is the mean per-user AUC
    rng = np.random.default_rng(12)
    mus = np.array([0.2, 0.9, 1.8])
    true = np.mean([phi(m / sqrt(2)) for m in mus])
    hits = 0
    for k in range(200):
        n_users, per_user = 40, 12
        u = np.repeat(np.arange(n_users), per_user)
        mu_u = mus[rng.integers(0, 3, n_users)]
        y = (rng.random(len(u)) < 0.4).astype(np.int64)
        s = rng.standard_normal(len(u)) + mu_u[u] * y
        lo, hi = metrics.bootstrap_uauc(u, y, s, n_boot=400, seed=k)
        hits += lo <= true <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_uauc_bootstrap_resamples_users_not_rows():
    rng = np.random.default_rng(13)
    n = 2000
    u = rng.integers(0, 100, n)
    y, s = binormal(rng, n, 0.8)
    u2, y2, s2 = np.repeat(u, 2), np.repeat(y, 2), np.repeat(s, 2)  # every row of every user twice
    w1 = np.subtract(*metrics.bootstrap_uauc(u, y, s)[::-1])
    w2 = np.subtract(*metrics.bootstrap_uauc(u2, y2, s2)[::-1])
    assert w2 == pytest.approx(w1, rel=0.1)  # same users, same information
    r1 = np.subtract(*metrics.bootstrap_auc(y, s)[::-1])
    r2 = np.subtract(*metrics.bootstrap_auc(y2, s2)[::-1])
    assert r2 < 0.8 * r1  # the row bootstrap takes the copies as new data (~1/sqrt 2)


def test_bootstrap_deterministic_given_seed():
    rng = np.random.default_rng(14)
    u = rng.integers(0, 50, 800)
    y, s = binormal(rng, 800, 0.5)
    assert metrics.bootstrap_auc(y, s, seed=3) == metrics.bootstrap_auc(y, s, seed=3)
    assert metrics.bootstrap_auc(y, s, seed=3) != metrics.bootstrap_auc(y, s, seed=4)
    assert metrics.bootstrap_uauc(u, y, s, seed=3) == metrics.bootstrap_uauc(u, y, s, seed=3)
    d1, d2 = (metrics.paired_bootstrap(u, y, s, -s, seed=3) for _ in range(2))
    assert d1 == d2
    # wider level, wider interval; more resamples accepted
    lo9, hi9 = metrics.bootstrap_auc(y, s, level=0.9, n_boot=500)
    lo99, hi99 = metrics.bootstrap_auc(y, s, level=0.99, n_boot=500)
    assert lo99 < lo9 < hi9 < hi99


def test_bootstrap_undefined_cases_give_nan():
    nan2 = metrics.bootstrap_auc([1, 1, 1], [0.1, 0.2, 0.3])
    assert np.isnan(nan2).all()
    assert np.isnan(metrics.bootstrap_auc([], [])).all()
    assert np.isnan(metrics.bootstrap_uauc([1, 2], [0, 1], [0.1, 0.2])).all()  # no user with both labels
    d = metrics.paired_bootstrap([1, 2], [1, 1], [0.1, 0.2], [0.3, 0.4], n_boot=10)
    assert np.isnan([d["auc_diff"], d["auc_diff_lo"], d["uauc_diff"], d["uauc_share_le0"]]).all()
    assert d["auc_boot_used"] == 0 and d["n_users_uauc"] == 0


BAD = [
    (lambda: metrics.bootstrap_auc([0, 1], [0.1]), ValueError, "scores must have 2 entries"),
    (lambda: metrics.bootstrap_auc([0, 1], [0.1, np.nan]), ValueError, "scores must be finite"),
    (lambda: metrics.bootstrap_auc([0, 3], [0.1, 0.2]), ValueError, "labels must be 0 or 1"),
    (lambda: metrics.bootstrap_auc([0, 1], [0.1, 0.2], n_boot=0), ValueError, "n_boot must be an int >= 1"),
    (lambda: metrics.bootstrap_auc([0, 1], [0.1, 0.2], n_boot=10.0), ValueError, "n_boot must be an int"),
    (lambda: metrics.bootstrap_auc([0, 1], [0.1, 0.2], level=95), ValueError, "level must be a float in"),
    (lambda: metrics.bootstrap_auc([0, 1], [0.1, 0.2], seed="x"), TypeError, "seed must be an int"),
    (lambda: metrics.bootstrap_uauc([1], [0, 1], [0.1, 0.2]), ValueError, "users must have 2 entries"),
    (lambda: metrics.bootstrap_uauc([1, 1], [0, 1], [np.inf, 0.2]), ValueError, "scores must be finite"),
    (lambda: metrics.paired_bootstrap([1, 1], [0, 1], [0.1, 0.2], [0.1]), ValueError, "scores_b must have 2"),
    (lambda: metrics.paired_bootstrap([1, 1], [0, 1], [0.1, 0.2], [0.1, np.nan]), ValueError,
     "scores_b must be finite"),
    (lambda: metrics.evaluate([1, 1], [0, 1], [0.1, 0.2], warm=[True]), ValueError, "warm must have 2"),
    (lambda: metrics.evaluate([1, 1], [0, 1], [0.1, 0.2], warm=[2, 0]), ValueError, "warm must be bool"),
    (lambda: metrics.evaluate([1, 1], [0, 1], [0.1, 0.2], n_boot=-1), ValueError, "n_boot must be"),
    (lambda: metrics.item_positive_rate_scores([0, 5], [0, 1], 5), ValueError, r"train_items must lie in \[0, 5\)"),
    (lambda: metrics.item_positive_rate_scores([0.5, 1], [0, 1], 5), TypeError, "train_items must be integer"),
    (lambda: metrics.item_positive_rate_scores([0, 1], [0, 2], 5), ValueError, "train_labels must be 0 or 1"),
    (lambda: metrics.item_positive_rate_scores([0, 1], [0], 5), ValueError, "train_labels must have 2"),
    (lambda: metrics.item_positive_rate_scores([], [], 5), ValueError, "at least one row"),
    (lambda: metrics.item_positive_rate_scores([0], [1], 0), ValueError, "n_items must be an int >= 1"),
    (lambda: metrics.item_positive_rate_scores([0], [1], 3, pseudo=-1.0), ValueError, "pseudo must be"),
]


@pytest.mark.parametrize("call,exc,msg", BAD)
def test_bootstrap_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_evaluate_intervals_and_degenerate_subsets():
    rng = np.random.default_rng(15)
    n = 1000
    u = rng.integers(0, 60, n)
    y, s = binormal(rng, n, 0.9)
    w = rng.random(n) < 0.7
    r = metrics.evaluate(u, y, s, w, n_boot=300)
    for p in ("", "warm_", "cold_"):
        assert r[p + "auc_lo"] < r[p + "auc"] < r[p + "auc_hi"]
        assert r[p + "uauc_lo"] < r[p + "uauc"] < r[p + "uauc_hi"]
        assert r[p + "n_users_uauc"] == r[p + "uauc_users"]
    assert (r["rows"], r["n_rows"], r["n_pos"]) == (n, n, int(y.sum()))
    assert r["warm_n_rows"] == r["warm_rows"] == int(w.sum()) and r["cold_n_pos"] == int(y[~w].sum())
    assert r["auc"] == metrics.auc(y, s) and (r["auc_lo"], r["auc_hi"]) == metrics.bootstrap_auc(y, s, 300)
    assert (r["uauc_lo"], r["uauc_hi"]) == metrics.bootstrap_uauc(u, y, s, 300)
    # cold rows all negative: NaN metrics with their counts, no error
    y2 = y.copy()
    y2[~w] = 0
    r2 = metrics.evaluate(u, y2, s, w, n_boot=50)
    assert np.isnan([r2["cold_auc"], r2["cold_auc_lo"], r2["cold_uauc"], r2["cold_uauc_hi"]]).all()
    assert r2["cold_n_rows"] == int((~w).sum()) and r2["cold_n_pos"] == 0 and r2["cold_n_users_uauc"] == 0
    # n_boot=0: no bootstrap (per-epoch validation), same points
    r0 = metrics.evaluate(u, y, s, w, n_boot=0)
    assert np.isnan(r0["auc_lo"]) and r0["auc"] == r["auc"] and r0["warm_uauc"] == r["warm_uauc"]


def test_item_positive_rate_scores():
    items = np.array([1, 1, 1, 2, 2, 4])
    labels = np.array([1, 1, 0, 0, 0, 1])
    mean = 0.5
    got = metrics.item_positive_rate_scores(items, labels, 6, pseudo=2.0)
    want = [mean, (2 + 1) / (3 + 2), (0 + 1) / (2 + 2), mean, (1 + 1) / (1 + 2), mean]
    assert got.dtype == np.float64 and got.shape == (6,)
    assert got == pytest.approx(want)
    raw = metrics.item_positive_rate_scores(items, labels, 6, pseudo=0.0)
    assert raw == pytest.approx([mean, 2 / 3, 0.0, mean, 1.0, mean])
    # scored like a method: popular-positive items rank higher
    test_items, test_y = np.array([1, 2, 4, 2]), np.array([1, 0, 1, 0])
    assert metrics.auc(test_y, got[test_items]) == 1.0


def test_tables_show_intervals():
    rng = np.random.default_rng(16)
    n = 800
    u = rng.integers(0, 40, n)
    y, s = binormal(rng, n, 0.9)
    w = rng.random(n) < 0.7
    res = {"A": metrics.evaluate(u, y, s, w, n_boot=200), "old": {"auc": 0.61, "rows": 5},
           "one class": metrics.evaluate(u[:3], np.zeros(3, int), s[:3], n_boot=10)}
    t = metrics.table(res)
    lines = t.splitlines()
    assert lines[0].startswith("| method | AUC [95% CI] | UAUC [95% CI] | warm AUC [95% CI] | cold AUC [95% CI] "
                               "| rows |")
    a = res["A"]
    assert f"| {a['auc']:.4f} [{a['auc_lo']:.3f}, {a['auc_hi']:.3f}] |" in lines[2]
    assert lines[2].endswith(f"| {n} |")
    assert lines[3] == "| old | 0.6100 | — | — | — | 5 |"
    assert "| — (3 rows) | — (3 rows) |" in lines[4]
    d = metrics.paired_bootstrap(u, y, s, s + rng.standard_normal(n), n_boot=200)
    dt = metrics.diff_table({"A - B": d})
    row = dt.splitlines()[2]
    assert row.startswith(f"| A - B | {d['auc_diff']:+.3f} [{d['auc_diff_lo']:+.3f}, {d['auc_diff_hi']:+.3f}] |")
    cell = r" \| [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \| \d\.\d{3}"
    assert re.fullmatch(r"\| A - B(" + cell + r"){2} \| 800 \| 40 \|", row)


@pytest.mark.slow
def test_bootstrap_auc_speed_10k_rows():
    rng = np.random.default_rng(17)
    y, s = binormal(rng, 10_000, 0.8)
    metrics.bootstrap_auc(y, s, n_boot=50)
    t = time.perf_counter()
    metrics.bootstrap_auc(y, s, n_boot=1000)
    assert time.perf_counter() - t < 1.0
