"""binllm.cf.retrieval pieces not covered with the run folder in test_recommend.py: list tasks and the
popularity-prior bits."""
import numpy as np
import pandas as pd
import pytest

import binllm
from binllm import data
from binllm.cf import retrieval

from conftest import random_codes


def test_prior_bits_add_the_prior_to_the_inner_product(rng):
    for d in (8, 13, 64):
        u, it = random_codes(rng, 7, d), random_codes(rng, 21, d)
        pop = rng.integers(0, 500, 20)
        levels, bits = retrieval.prior_levels(pop, 4.0)
        np.testing.assert_array_equal(levels, np.rint(4.0 * np.log1p(pop) / 2))
        assert bits == levels.max()
        u2, i2, d2 = retrieval.append_prior_bits(u, it, d, levels, bits)
        assert d2 == d + bits and u2.shape[1] == (d2 + 7) // 8 and i2.shape[1] == (d2 + 7) // 8
        want = binllm.dot_all(u, it[1:], d) + (2 * levels - bits)[None, :]
        np.testing.assert_array_equal(binllm.dot_all(u2, i2[1:], d2), want)
        # the learned bits come first, unchanged
        np.testing.assert_array_equal(binllm.unpack_bits(i2, d2)[:, :d], binllm.unpack_bits(it, d))
    assert retrieval.append_prior_bits(u, it, 64, np.zeros(20, int), 0)[2] == 64  # weight 0: no bits
    for bad in (-1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
            retrieval.prior_levels(pop, bad)
    with pytest.raises(ValueError, match=r"levels must be \(20,\) integers in 0..3"):
        retrieval.append_prior_bits(u, it, 64, np.full(20, 4), 3)


def test_list_task_matches_a_set_oracle():
    """Users, exclusions and targets of ListTask against plain Python sets over the prepared rows, with
    repeated (user, item) pairs so that some targets are already known."""
    rng = np.random.default_rng(3)
    k = np.arange(1500)
    frame = pd.DataFrame({"user": (k % 40).astype(str), "item": rng.integers(0, 60, len(k)).astype(str),
                          "rating": rng.integers(1, 6, len(k)).astype(float), "timestamp": 10**9 + k})
    prep = data.prepare(data.Ratings(frame, pd.Series("t", index=frame["item"].unique()), "synthetic"),
                        "ml-100k-user")
    r = prep.rows
    for known, target in ((("train",), "valid"), (("train", "valid"), "test")):
        t = retrieval.ListTask.of(prep, known, target)
        km = np.zeros(len(r), bool)
        for sp in known:
            km |= prep.mask(sp)
        tm = prep.mask(target) & (r["label"].to_numpy() == 1)
        seen: dict[int, set] = {}
        for u, i in zip(r["uid"][km], r["iid"][km]):
            seen.setdefault(int(u), set()).add(int(i) - 1)
        want: dict[int, set] = {}
        dropped = 0
        for u, i in {(int(u), int(i)) for u, i in zip(r["uid"][tm], r["iid"][tm])}:
            if i - 1 in seen.get(u, set()):
                dropped += 1
            else:
                want.setdefault(u, set()).add(i - 1)
        assert t.users.tolist() == sorted(want) and t.dropped == dropped > 0
        for pos, u in enumerate(t.users):
            ex = t.excl_items[t.excl_offsets[pos]:t.excl_offsets[pos + 1]]
            tg = t.targets[t.target_offsets[pos]:t.target_offsets[pos + 1]]
            assert ex.tolist() == sorted(seen.get(int(u), set())) and tg.tolist() == sorted(want[int(u)])
        sub = t.subset(np.arange(len(t.users))[::-2])
        assert sub.users.tolist() == t.users[::-2].tolist()
        assert sub.targets[:sub.target_offsets[1]].tolist() == sorted(want[int(t.users[-1])])
    with pytest.raises(ValueError, match="must not be among the known splits"):
        retrieval.ListTask.of(prep, ("train", "valid"), "valid")
