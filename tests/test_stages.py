"""Bad input to the stage functions of binllm.stages: one clear error naming the argument."""
from __future__ import annotations

import numpy as np
import pytest

from binllm import data, stages


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
