"""Bad input to the stage functions of binllm.run.stages: one clear error naming the argument."""
from __future__ import annotations

import numpy as np
import pytest

from binllm import data
from binllm.run import stages


@pytest.fixture(scope="module")
def prep_dir(tmp_path_factory):
    k = np.arange(3000)
    import pandas as pd

    frame = pd.DataFrame({"user": (k % 60).astype(str), "item": (k * 7 % 80).astype(str),
                          "rating": (1 + k * 13 % 5).astype(float), "timestamp": 10**9 + k * 60})
    ratings = data.Ratings(frame, pd.Series("t", index=frame["item"].unique()), "synthetic")
    out = tmp_path_factory.mktemp("st") / "data"
    data.prepare(ratings, "ml-100k-user").save(out)
    return out


def test_sample_rows_is_fixed_by_seed_and_checks_arguments(prep_dir):
    prep = data.load_prepared(prep_dir)
    a, b = stages.sample_rows(prep, "test", 50, 3), stages.sample_rows(prep, "test", 50, 3)
    assert np.array_equal(a, b) and len(a) == 50 and prep.mask("test")[a].all()
    assert len(stages.sample_rows(prep, "test", None)) == prep.mask("test").sum()
    with pytest.raises(ValueError, match="split must be one of"):
        stages.sample_rows(prep, "tset", 5)
    with pytest.raises(ValueError, match="sample size of test must be >= 1"):
        stages.sample_rows(prep, "test", 0)


def test_score_files_round_trip_and_bad_files(tmp_path):
    f = stages.write_scores(tmp_path / "s.npz", np.array([3, 1]), np.array([0.5, -1.0]), {"method": "x"})
    rows, scores, meta = stages.read_scores(f)
    assert rows.tolist() == [3, 1] and scores.dtype == np.float32 and meta == {"method": "x"}
    with pytest.raises(stages.StageError, match="must end in .npz"):
        stages.write_scores(tmp_path / "s.txt", np.array([1]), np.array([1.0]), {})
    with pytest.raises(stages.StageError, match="score file not found"):
        stages.read_scores(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(stages.StageError, match="not a binllm score file"):
        stages.read_scores(tmp_path / "junk.npz")


def test_score_and_evaluate_check_their_arguments(prep_dir, tmp_path):
    with pytest.raises(stages.StageError, match="method must be one of"):
        stages.score(prep_dir, tmp_path / "a.npz", method="magic")
    with pytest.raises(stages.StageError, match="batch_size must be >= 1"):
        stages.score(prep_dir, tmp_path / "a.npz", batch_size=0)
    with pytest.raises(stages.StageError, match="needs the pretrain folder"):
        stages.score(prep_dir, tmp_path / "a.npz", method="mf")
    with pytest.raises(stages.StageError, match="needs at least one score file"):
        stages.evaluate(prep_dir, {})
    stages.score(prep_dir, tmp_path / "p.npz", method="popularity", rows=20, progress=False)
    with pytest.raises(stages.StageError, match="names a method without scores"):
        stages.evaluate(prep_dir, {"p": tmp_path / "p.npz"}, pairs=[("p", "q")], n_boot=10)


def test_pretrain_adds_retrieval_codes_to_an_older_folder_and_refuses_other_settings(tmp_path):
    """A folder made before the retrieval codes existed keeps its models and gains the retrieval code book;
    a recorded model with other settings is refused, naming the settings that differ."""
    import json

    import pandas as pd

    from binllm.cf.codebook import CodeBook
    from binllm.cf.hashing import HashConfig

    rng = np.random.default_rng(0)
    rows = [(str(u), str(i), float(rng.integers(1, 6)), 10**9 + 60 * j)
            for u in range(50) for j, i in enumerate(rng.choice(70, 30, replace=False))]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    prep_dir = tmp_path / "data"
    data.prepare(data.Ratings(frame, pd.Series("t", index=frame["item"].unique()), "synthetic"),
                 "ml-100k-user").save(prep_dir)

    out = tmp_path / "hash"
    hc = HashConfig(d=16, max_epochs=2, batch_size=512)
    stages.pretrain(prep_dir, out, hc, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    # as binllm 0.2 wrote it: configs without the fields added since, no "retrieval" entry
    for k in ("objective", "negatives", "neg_popularity", "temperature"):
        del m["configs"]["hash"][k]
    m["configs"]["mf"] = None
    (out / "metrics.json").write_text(json.dumps(m))
    before = (out / "codebook.safetensors").read_bytes()
    rc = HashConfig.retrieval_codes(d=24, max_epochs=2, batch_size=512, negatives=2)
    res = stages.pretrain(prep_dir, out, hc, retrieval_cfg=rc, progress=False)
    assert (out / "codebook.safetensors").read_bytes() == before  # the prompt codes are untouched
    cb = CodeBook.load(out / "retrieval_codebook.safetensors")
    # the learned 24 bits, then the popularity-prior bits of the weight chosen on valid lists
    assert cb.config["learned_bits"] == 24 and cb.d == 24 + cb.config["prior_bits"]
    assert cb.config["prior_weight"] in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0) and len(cb.config["prior_tried"]) == 6
    tried = cb.config["prior_tried"]
    assert max(tried.values(), key=lambda t: t["valid_ndcg@10"]) == tried[str(cb.config["prior_weight"])]
    assert cb.config["objective"] == "softmax" and res["retrieval"]["select"] == "valid_ndcg@10"
    assert "valid_hr@10" in res["retrieval"]
    again = stages.pretrain(prep_dir, out, hc, retrieval_cfg=rc, progress=False)  # finished: skipped
    assert again == json.loads((out / "metrics.json").read_text())
    other = HashConfig.retrieval_codes(d=32, max_epochs=2, batch_size=512)
    refused = r"holds a retrieval model made with other settings \(d: 24 -> 32, negatives: "
    with pytest.raises(stages.StageError, match=refused):
        stages.pretrain(prep_dir, out, hc, retrieval_cfg=other, progress=False)
    refused = r"holds a hash model made with other settings \(objective: 'bce' -> 'bpr'\)"
    with pytest.raises(stages.StageError, match=refused):
        stages.pretrain(prep_dir, out, HashConfig(d=16, max_epochs=2, batch_size=512, objective="bpr"),
                        progress=False)
    with pytest.raises(stages.StageError, match="retrieval_cfg must configure a hash model"):
        stages.pretrain(prep_dir, out, hc, retrieval_cfg=HashConfig(model="mf", objective="bpr"), progress=False)


def test_list_objective_needs_valid_positives(prep_dir):
    """Repeated (user, item) pairs: every valid positive is already rated in train, so nothing to select on."""
    from binllm.cf import hashing

    with pytest.raises(ValueError, match="selects its epoch by valid lists, but no user has a valid positive"):
        hashing.train(data.load_prepared(prep_dir), hashing.HashConfig(objective="bpr", max_epochs=1), None,
                      progress=False)
