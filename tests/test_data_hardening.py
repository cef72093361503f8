"""Regression tests for the data failures of the reliability review (F10, F11, F13, F14, F15, F21)."""
import json
import os
import pickle
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from binllm import _io, data
from binllm.data import DataError, Protocol

from conftest import PKG_PARENT as ROOT  # noqa: E402  (where the imported binllm lives)


def ts(s):
    return int(pd.Timestamp(s, tz="UTC").timestamp())


def table_csv(tmp_path, n_users=4, per_user=8, title=False, name="good.csv"):
    """A ratings CSV whose global 70/15/15 time split has rows in every split."""
    recs = []
    t = ts("2020-01-01")
    for k in range(n_users * per_user):
        recs.append({"u": f"u{k % n_users}", "i": f"i{k % 5}", "r": 1 + k % 5, "t": t + 3600 * k})
    df = pd.DataFrame(recs)
    if title:
        df["name"] = "Title " + df["i"]
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def small_prep(tmp_path):
    return data.prepare(data.read_table(table_csv(tmp_path, title=True), user="u", item="i", rating="r",
                                        timestamp="t", title="name"), "ml-100k")


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------- F10 title-less tables


def test_f10_table_without_titles(tmp_path):
    csv = table_csv(tmp_path)
    cols = data.parse_columns("u,i,r,t")
    with pytest.raises(DataError, match=r"have no title.*--missing-titles empty"):
        data.prepare(data.load_source("table", csv, **cols), "ml-100k")
    ratings = data.load_source("table", csv, missing_titles="empty", **cols)
    assert ratings.skipped["items_without_title"] == 5
    prep = data.prepare(ratings, data.default_protocol("table"))
    assert prep.titles.tolist() == [""] * 6
    assert prep.meta["skipped"]["items_without_title"] == 5
    direct = data.read_table(csv, missing_titles="empty", **cols)
    pd.testing.assert_frame_equal(direct.frame, ratings.frame)
    with pytest.raises(ValueError, match="missing_titles must be 'error' or 'empty'"):
        data.load_source("table", csv, missing_titles="skip", **cols)


def test_f10_partial_titles_kept(tmp_path):
    csv = table_csv(tmp_path)
    tp = tmp_path / "titles.csv"
    pd.DataFrame({"i": ["i0", "i1"], "title": ["Zero", "One"]}).to_csv(tp, index=False)
    r = data.read_table(csv, user="u", item="i", rating="r", timestamp="t", titles_path=tp, missing_titles="empty")
    assert r.titles.to_dict() == {"i0": "Zero", "i1": "One", "i2": "", "i3": "", "i4": ""}
    assert r.skipped["items_without_title"] == 3


# ---------------------------------------------------------------- F11 --out that is not ours


def test_f11_save_refuses_foreign_paths(tmp_path):
    prep = small_prep(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("important")
    with pytest.raises(ValueError, match="victim.txt exists and is not a folder"):
        prep.save(victim)
    assert victim.read_text() == "important"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv", "victim.txt"]
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ValueError, match="photos is an existing folder that is not a binllm prepared output"):
        prep.save(folder)
    assert (folder / "cat.jpg").read_bytes() == b"meow"
    # an empty folder, our own output and a folder of an older binllm (no marker) are replaced
    (tmp_path / "empty").mkdir()
    prep.save(tmp_path / "empty")
    prep.save(tmp_path / "empty")
    legacy = tmp_path / "legacy"
    prep.save(legacy)
    (legacy / _io.OUTPUT_MARKER).unlink()
    prep.save(legacy)
    assert data.load_prepared(legacy).rows.equals(prep.rows)


# ---------------------------------------------------------------- F13 pickles


def write_reference(folder):
    folder.mkdir(exist_ok=True)
    pd.DataFrame(dict(uid=[1, 1], iid=[1, 2], label=[1, 0], timestamp=[1, 2], his=[[0], [0, 1]],
                      his_title=[[""], ["", "T1"]], flag=[-1, -1], title=["T1", "T2"], not_cold=[1, 1],
                      score=[0.5, 0.25])).to_pickle(folder / "train.pkl")
    pd.DataFrame(dict(uid=[1], iid=[2], label=[1], timestamp=[3], his=[[0, 1]], his_title=[["", "T1"]],
                      flag=[0], title=["T2"], not_cold=[1])).to_pickle(folder / "valid.pkl")
    pd.DataFrame(dict(uid=[2], iid=[3], label=[0], timestamp=[4], his=[[0]], his_title=[[""]],
                      flag=[1], title=["T3"], not_cold=[0])).to_pickle(folder / "test.pkl")
    return folder


class Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def test_f13_pickles_need_trust(tmp_path):
    folder = write_reference(tmp_path / "ref")
    with pytest.raises(DataError, match="--trust-pickles"):
        data.read_reference_pickles(folder)
    prep = data.read_reference_pickles(folder, trust_pickles=True, domain="movie")
    assert prep.rows["flag"].tolist() == [-1, -1, 0, 1] and prep.domain == "movie"
    assert prep.meta["protocol_name"] == "reference"
    with pytest.raises(DataError, match="does not record its item domain"):
        _ = data.read_reference_pickles(folder, trust_pickles=True).domain


@pytest.mark.parametrize("payload", ["system", "eval", "popen", "in_frame"])
def test_f13_malicious_pickle_is_refused_and_runs_nothing(tmp_path, payload):
    folder = write_reference(tmp_path / "ref")
    marker = tmp_path / "PWNED"
    cmd = f"touch {marker}"
    obj = {"system": Evil(os.system, cmd),
           "eval": Evil(eval, f"__import__('os').system({cmd!r})"),
           "popen": Evil(subprocess.Popen, ["touch", str(marker)]),
           "in_frame": pd.DataFrame({"uid": [1], "x": [Evil(os.system, cmd)]})}[payload]
    (folder / "train.pkl").write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match=r"train.pkl: refused to load this pickle: global .* is not allowed"):
        data.read_reference_pickles(folder, trust_pickles=True)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_f13_real_dataframe_pickles_load(tmp_path, protocol):
    df = pd.DataFrame(dict(a=[1, 2], b=[0.5, 1.5], c=["x", "y"], d=[[0, 1], [2]], e=[True, False],
                           f=np.array([3, 4], np.int32)))
    p = tmp_path / "f.pkl"
    p.write_bytes(pickle.dumps(df, protocol=protocol))
    from binllm.data.reference import load_pickled_frame

    pd.testing.assert_frame_equal(load_pickled_frame(p), df)
    p.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="expected a pickled DataFrame; got list"):
        load_pickled_frame(p)
    p.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="f.pkl"):
        load_pickled_frame(p)


# ---------------------------------------------------------------- F14 unusable data


def test_f14_one_timestamp_gives_empty_train(tmp_path):
    csv = tmp_path / "same.csv"
    pd.DataFrame({"u": ["a", "b", "c"] * 3, "i": list("xyzyzxzxy"), "r": [5] * 9, "t": [1_000_000] * 9,
                  "name": ["X"] * 9}).to_csv(csv, index=False)
    r = data.read_table(csv, user="u", item="i", rating="r", timestamp="t", title="name")
    with pytest.raises(DataError, match=r"the train split of protocol 'ml-100k' is empty \(train/valid/test rows: "
                                        r"0/0/9\)"):
        data.prepare(r, "ml-100k")
    # the per-user split of 3 ratings each puts all in train: valid is empty
    with pytest.raises(DataError, match="the valid split of protocol 'ml-100k-user' is empty"):
        data.prepare(r, "ml-100k-user")


@pytest.mark.parametrize("bad,match", [
    (np.inf, "rating inf of row 3 .*is not finite"),
    (np.nan, "rating nan of row 3 .*is not finite"),
    (-3.0, r"rating -3.0 of row 3 \(user 'u3', item 'i3'\) is outside the range \[0, 5\] of protocol 'ml-100k'"),
    (1e9, "rating 1000000000.0 of row 3 .*outside the range"),
])
def test_f14_bad_ratings_name_the_row(bad, match):
    frame = pd.DataFrame({"user": [f"u{k}" for k in range(6)], "item": [f"i{k}" for k in range(6)],
                          "rating": [4.0, 5, 1, bad, 2, 3], "timestamp": np.arange(6) * 1000})
    r = data.Ratings(frame, pd.Series({f"i{k}": "t" for k in range(6)}), "hand")
    with pytest.raises(DataError, match=match):
        data.prepare(r, "ml-100k")


def test_f14_rating_range_is_a_protocol_setting():
    frame = pd.DataFrame({"user": ["a"] * 8 + ["b"] * 8, "item": [f"i{k % 4}" for k in range(16)],
                          "rating": [8.0, 2] * 4 + [8.0, 2, 8, 2, 8, 2, 2, 8], "timestamp": np.arange(16) * 1000})
    r = data.Ratings(frame, pd.Series({f"i{k}": "t" for k in range(4)}), "hand")
    with pytest.raises(DataError, match="outside the range"):
        data.prepare(r, "ml-100k-user")
    p = Protocol("ten-stars", split="user_time", label_min=7, rating_range=(1, 10))
    assert data.prepare(r, p).rows["label"].sum() > 0
    with pytest.raises(ValueError, match="rating_range must be finite"):
        Protocol("x", rating_range=(5, 1))


def test_f14_inf_in_a_csv_names_the_line(tmp_path):
    csv = tmp_path / "inf.csv"
    csv.write_text("u,i,r,t\na,x,5,1000\nb,y,inf,2000\n")
    with pytest.raises(DataError, match="inf.csv: rating is not finite on line 3"):
        data.read_table(csv, **data.parse_columns("u,i,r,t"))


@pytest.mark.parametrize("spec,match", [
    ("u,i,r", "needs 4 or 5 comma-separated column names .*got 3"),
    ("u,i,r,t,n,x,y", "got 7"),
    ("u,,r,t", "empty column name"),
    ("u,i,u,t", r"names column\(s\) \['u'\] more than once"),
])
def test_f14_parse_columns_errors(spec, match):
    with pytest.raises(DataError, match=match):
        data.parse_columns(spec)


def test_f14_parse_columns():
    assert data.parse_columns("who, what,stars,when") == {"user": "who", "item": "what", "rating": "stars",
                                                          "timestamp": "when"}
    assert data.parse_columns("u,i,r,t,n")["title"] == "n"
    with pytest.raises(TypeError, match="columns must be a string"):
        data.parse_columns(None)


# ---------------------------------------------------------------- F15 stale temps of killed saves


def test_f15_stale_temps_removed_by_next_save(tmp_path):
    prep = small_prep(tmp_path)
    out = tmp_path / "d"
    dead = dead_pid()
    stale = tmp_path / f".d.binllm-tmp.{dead}.abcdef12"  # a save killed mid-write (this version)
    stale.mkdir()
    (stale / "rows.parquet").write_bytes(b"partial")
    legacy = tmp_path / ".d.k3x_9q2z"  # mkdtemp folder of an older version's killed save
    legacy.mkdir()
    (legacy / "rows.parquet").write_bytes(b"partial")
    os.utime(legacy, (1e9, 1e9))
    foreign = tmp_path / ".d.notes123"  # same shape of name, but not prepared files: kept
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep")
    os.utime(foreign, (1e9, 1e9))
    prep.save(out)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".d.notes123", "d", "good.csv"]


def test_f15_killed_save_leaves_old_dataset_and_is_cleaned(tmp_path):
    prep = small_prep(tmp_path)
    out = tmp_path / "d"
    prep.save(out)
    code = (
        "import os, pyarrow.parquet as pq\n"
        "from binllm import data\n"
        f"prep = data.load_prepared({str(out)!r})\n"
        "orig = pq.write_table\n"
        "def killed(table, where, *a, **k):\n"
        "    orig(table, where, *a, **k)\n"
        "    if str(where).endswith('items.parquet'):\n"
        "        os._exit(9)\n"
        "pq.write_table = killed\n"
        f"prep.save({str(out)!r})\n")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert res.returncode == 9
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".d.binllm-tmp.")]
    assert len(left) == 1  # the killed save's temp folder
    assert data.load_prepared(out).rows.equals(prep.rows)  # the old dataset is intact
    prep.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "good.csv"]


# ---------------------------------------------------------------- F21 umask, reproducible valid_small


def test_f21_prepared_folder_honours_umask(tmp_path):
    prep = small_prep(tmp_path)
    old = os.umask(0o022)
    try:
        prep.save(tmp_path / "d")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    for f in (tmp_path / "d").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


SYNTH = ("import numpy as np, pandas as pd\nfrom binllm import data\n"
         "k = np.arange(2000)\n"
         "frame = pd.DataFrame({'user': (k % 50).astype(str), 'item': (k * 7 % 300).astype(str),\n"
         "                      'rating': (1 + k * 13 % 5).astype(float), 'timestamp': 10**9 + k * 60})\n"
         "ratings = data.Ratings(frame, pd.Series('t', index=frame['item'].unique()), 'synthetic')\n")


def test_f21_valid_small_reproducible():
    import dataclasses
    import hashlib

    ns = {}
    exec(SYNTH, ns)
    ratings = ns["ratings"]
    a = data.prepare(ratings, "ml-100k-user").rows["valid_small"].to_numpy()
    b = data.prepare(ratings, "ml-100k-user").rows["valid_small"].to_numpy()
    assert (a == b).all() and a.sum() == 150  # 50 users x 6 valid rows, half of them
    code = SYNTH + ("import hashlib\nv = data.prepare(ratings, 'ml-100k-user').rows['valid_small'].to_numpy()\n"
                    "print(hashlib.sha256(v.tobytes()).hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT,
                         capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == hashlib.sha256(a.tobytes()).hexdigest()
    other = data.prepare(ratings, dataclasses.replace(data.PROTOCOLS["ml-100k-user"], seed=1))
    assert (other.rows["valid_small"].to_numpy() != a).any()


def test_corrupt_prepared_folder_is_a_data_error(tmp_path):
    prep = small_prep(tmp_path)
    out = prep.save(tmp_path / "d")
    (out / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json: not valid JSON"):
        data.load_prepared(out)
    prep.save(out)
    (out / "rows.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match="rows.parquet does not match the sha256 in meta.json"):
        data.load_prepared(out)
    meta = json.loads((out / "meta.json").read_text())
    del meta["checksums"]  # a folder from before checksums were recorded
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="unreadable prepared dataset"):
        data.load_prepared(out)
