"""The data protocol on generated files whose correct output is derived by hand,
plus the embedded ML-100K and the bad-input contract."""
import gzip
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from binllm import data
from binllm.data import DataError, Protocol


def ts(s):
    return int(pd.Timestamp(s, tz="UTC").timestamp())


ML1M_ROWS = [  # user, item, rating, time (UTC)
    (9, 100, 5, "2000-04-15"),            # slot 0 -> dropped, defines slot 0
    (20, 300, 4, "2001-07-01"),           # slot 15 train
    (20, 100, 2, "2001-06-10"),           # slot 14 train (first train month)
    (10, 200, 5, "2002-05-01"),           # slot 25 valid
    (10, 400, 3, "2001-12-01"),           # slot 20 train
    (10, 300, 4, "2002-10-01"),           # slot 30 test
    (20, 200, 5, "2002-09-15"),           # slot 29 test
    (10, 100, 5, "2003-02-10"),           # slot 34 -> dropped
    (20, 400, 1, "2002-06-01"),           # slot 26 valid
    (30, 500, 4, "2002-03-31 23:59:59"),  # slot 23 train (last second)
    (30, 600, 4, "2002-04-01 00:00:00"),  # slot 24 valid (first second)
    (9, 300, 4, "2001-05-31 23:59:59"),   # slot 13 -> dropped
]
MOVIES = {100: "Alpha (1999)", 200: "Beta (2000)", 300: "Café Gamma (1990)", 400: "Delta (1980)",
          500: "Epsilon (1970)", 600: "Zeta (1960)"}


def write_ml1m(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_bytes(
        "\n".join(f"{u}::{i}::{r}::{ts(t)}" for u, i, r, t in ML1M_ROWS).encode("latin-1") + b"\n")
    (folder / "movies.dat").write_bytes(
        "\n".join(f"{i}::{t}::Drama" for i, t in MOVIES.items()).encode("latin-1") + b"\n")
    return folder


def test_ml1m_protocol_by_hand(tmp_path):
    prep = data.prepare(data.read_ml1m(write_ml1m(tmp_path / "ml-1m")), "ml-1m")
    r = prep.rows
    # sorted by (user as a number, time): user 10 -> uid 1, 20 -> 2, 30 -> 3; 9 has no kept rows
    assert r["uid"].tolist() == [1, 1, 1, 2, 2, 2, 2, 3, 3]
    # items by first appearance in that order: 400, 200, 300, 100, 500, 600
    assert prep.item_ids.tolist() == ["", "400", "200", "300", "100", "500", "600"]
    assert r["iid"].tolist() == [1, 2, 3, 4, 3, 1, 2, 5, 6]
    assert r["label"].tolist() == [0, 1, 1, 0, 1, 0, 1, 1, 1]
    assert r["flag"].tolist() == [-1, 0, 1, -1, -1, 0, 1, -1, 0]
    # histories: earlier liked items of the same user, across splits
    assert [h.tolist() for h in prep.history(np.arange(9))] == [[], [], [2], [], [], [3], [3], [], [5]]
    assert r["his_count"].tolist() == [0, 0, 1, 0, 0, 1, 1, 0, 1]
    # warm = user and item both in train (train items: 400, 100, 300, 500)
    assert r["not_cold"].tolist() == [True, False, True, True, True, True, False, True, False]
    assert prep.titles[3] == "Café Gamma (1990)"  # latin-1 decoded
    assert (prep.n_user_slots, prep.n_item_slots) == (4, 7)
    assert prep.meta["split_info"]["slot0"] == "2000-04"
    assert prep.meta["skipped"]["outside_split_periods"] == 3
    c = prep.counts()
    assert (c["train"]["rows"], c["valid"]["rows"], c["test"]["rows"]) == (4, 3, 2)


def test_ml1m_from_zip_equals_folder(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    z = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(z, "w") as f:
        for name in ("ratings.dat", "movies.dat"):
            f.write(folder / name, f"ml-1m/{name}")
    a = data.prepare(data.read_ml1m(folder), "ml-1m")
    b = data.prepare(data.read_ml1m(z), "ml-1m")
    pd.testing.assert_frame_equal(a.rows, b.rows)


def slow_histories(rows):
    """Reference: walk each user's rows in time order."""
    out, liked, last = [], [], None
    for u, i, lab in zip(rows["uid"], rows["iid"], rows["label"]):
        if u != last:
            liked, last = [], u
        out.append(list(liked))
        if lab == 1:
            liked.append(i)
    return out


def test_ml100k_embedded_default():
    prep = data.prepare(data.read_ml100k(), "ml-100k")
    r = prep.rows
    c = prep.counts()
    assert c["train"]["rows"] + c["valid"]["rows"] + c["test"]["rows"] == 100_000
    for s, share in (("train", 0.70), ("valid", 0.15), ("test", 0.15)):
        assert abs(c[s]["rows"] / 100_000 - share) < 0.01
    assert r["uid"].max() == 943 and r["iid"].max() == 1682
    assert (np.diff(r["uid"].to_numpy()) >= 0).all()
    # the label rule and the time order of the split
    t = r["timestamp"].to_numpy()
    f = r["flag"].to_numpy()
    assert t[f == -1].max() < t[f == 0].min() and t[f == 0].max() < t[f == 1].min()
    want = slow_histories(r)
    got = prep.history(np.arange(len(r)))
    assert all(g.tolist() == w[-20:] for g, w in zip(got, want))
    assert (r["his_count"].to_numpy() == [len(w) for w in want]).all()
    assert abs(c["valid_small"]["rows"] - c["valid"]["rows"] / 2) <= 1
    assert prep.titles[r["iid"].iloc[0]] != ""
    # the global split as first published (README table), unchanged so old runs reproduce
    assert [c[s]["rows"] for s in ("train", "valid", "valid_small", "test")] == [69_997, 15_003, 7_501, 15_000]
    assert [c[s]["users"] for s in ("train", "valid", "test")] == [674, 247, 226]


def test_save_load_roundtrip_and_overwrite(tmp_path):
    prep = data.prepare(data.read_ml1m(write_ml1m(tmp_path / "src")), "ml-1m")
    out = tmp_path / "prepared"
    prep.save(out)
    prep.save(out)  # overwriting is atomic and leaves no temporary folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "src"]
    back = data.load_prepared(out)
    pd.testing.assert_frame_equal(back.rows, prep.rows)
    assert back.his_offsets.tolist() == prep.his_offsets.tolist()
    assert back.titles.tolist() == prep.titles.tolist()
    assert back.meta["counts"] == json.loads(json.dumps(prep.meta["counts"]))
    assert all(len(h) == 64 for h in back.meta["files"].values())
    (out / "items.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="items.parquet is missing"):
        data.load_prepared(out)


def write_amazon(tmp_path, reviews, titles, gz=True):
    rp = tmp_path / ("reviews.json.gz" if gz else "reviews.json")
    opener = gzip.open if gz else open
    with opener(rp, "wt", encoding="utf-8") as f:
        for rec in reviews:
            f.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")
    mp = tmp_path / "meta.json.gz"
    with gzip.open(mp, "wt", encoding="utf-8") as f:
        for asin, title in titles.items():
            f.write(json.dumps({"asin": asin, "title": title, "description": ["long text"]}) + "\n")
    return rp, mp


def review(user, asin, stars, when):
    return {"overall": stars, "reviewerID": user, "asin": asin, "unixReviewTime": ts(when), "reviewText": "x" * 50}


def test_amazon_protocol_by_hand(tmp_path):
    revs = [
        review("U1", "A", 5, "2017-01-05"), review("U1", "B", 4, "2017-03-01"), review("U1", "A", 5, "2017-12-20"),
        review("U2", "A", 3, "2017-02-01"), review("U2", "B", 5, "2017-12-01"), review("U2", "B", 5, "2017-12-01"),
        review("U2", "C", 5, "2017-06-01"),  # C has 1 rating -> filtered (needs > 1 with min_count=1)
        review("U3", "A", 5, "2016-12-31"), review("U1", "B", 5, "2018-01-01"),  # other years
        {"reviewerID": "U9", "asin": "A", "unixReviewTime": ts("2017-05-05")},  # no rating -> skipped
        review("U2", "A", 5, "2017-12-10"),
        review("U1", "C", 2, "2017-12-02"),  # C's second rating: kept; valid gets both labels
    ]
    rp, mp = write_amazon(tmp_path, revs, {"A": "Book A", "B": "Book B", "C": "Book C"})
    ratings = data.read_amazon(rp, mp, year=2017, progress=False)
    assert ratings.skipped == {"reviews_missing_fields": 1, "reviews_other_years": 2}
    p = Protocol("amazon-book", label_min=5, split="year_december", year=2017, min_count=1, valid_small=0.5)
    prep = data.prepare(ratings, p)
    assert prep.meta["skipped"]["duplicate_rows"] == 1
    r = prep.rows
    # kept: U1:A(Jan),B(Mar),C(Dec2),A(Dec20); U2:A(Feb),C(Jun),B(Dec1),A(Dec10);
    # December by time: B(Dec1), C(Dec2), A(Dec10), A(Dec20)
    assert prep.user_ids.tolist() == ["", "U1", "U2"]
    assert r["uid"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert r["label"].tolist() == [1, 0, 0, 1, 0, 1, 1, 1]
    # first half of December (2 of 4 rows) is valid, the rest test
    assert r["flag"].tolist() == [-1, -1, 0, 1, -1, -1, 0, 1]
    assert [h.tolist() for h in prep.history(np.arange(8))] == [[], [1], [1], [1], [], [], [3], [3, 2]]
    assert prep.titles.tolist() == ["", "Book A", "Book B", "Book C"]


def test_amazon_plain_json_and_malformed(tmp_path):
    rp, mp = write_amazon(tmp_path, [review("U1", "A", 5, "2017-01-05"), '{"overall": 5, "reviewerID": '], {"A": "t"},
                          gz=False)
    with pytest.raises(DataError, match="reviews.json: malformed JSON"):
        data.read_amazon(rp, mp, progress=False)


def test_generic_table_with_dates(tmp_path):
    csv = tmp_path / "log.csv"
    pd.DataFrame({"who": ["a", "b", "a"], "what": ["x", "y", "y"], "stars": [5, 1, 4],
                  "when": ["2020-01-01", "2020-01-02", "2020-01-03"], "name": ["X", "Y", "Y"]}).to_csv(csv, index=False)
    r = data.read_table(csv, user="who", item="what", rating="stars", timestamp="when", title="name")
    assert r.frame["timestamp"].tolist() == [ts("2020-01-01"), ts("2020-01-02"), ts("2020-01-03")]
    assert r.titles.to_dict() == {"x": "X", "y": "Y"}
    with pytest.raises(DataError, match=r"log.csv: missing column\(s\) \['rating'\]"):
        data.read_table(csv, user="who", item="what", timestamp="when")


def test_reference_pickles(tmp_path):
    base = dict(title=["T1", "T2"], not_cold=[1, 1])
    pd.DataFrame(dict(uid=[1, 1], iid=[1, 2], label=[1, 0], timestamp=[1, 2], his=[[0], [0, 1]],
                      his_title=[[""], ["", "T1"]], flag=[-1, -1], **base)).to_pickle(tmp_path / "train_ood2.pkl")
    pd.DataFrame(dict(uid=[1], iid=[2], label=[1], timestamp=[3], his=[[0, 1]], his_title=[["", "T1"]],
                      flag=[0], title=["T2"], not_cold=[1])).to_pickle(tmp_path / "valid_ood2.pkl")
    pd.DataFrame(dict(uid=[2], iid=[3], label=[0], timestamp=[4], his=[[0]], his_title=[[""]],
                      flag=[1], title=["T3"], not_cold=[0])).to_pickle(tmp_path / "test_ood2.pkl")
    prep = data.read_reference_pickles(tmp_path, trust_pickles=True)
    assert prep.rows["flag"].tolist() == [-1, -1, 0, 1]
    assert [h.tolist() for h in prep.history(np.arange(4))] == [[], [1], [1], []]
    assert prep.titles.tolist() == ["", "T1", "T2", "T3"]
    assert prep.rows["not_cold"].tolist() == [True, True, True, False]


# ---------------------------------------------------------------- bad input


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="ratings.dat"):
        data.read_ml1m(tmp_path)
    (tmp_path / "ratings.dat").write_text("")
    with pytest.raises(DataError, match="ratings.dat: the file is empty"):
        data.read_ml1m(tmp_path)
    with pytest.raises(FileNotFoundError, match="ml-100k.inter"):
        data.read_ml100k(tmp_path)


@pytest.mark.parametrize("line,match", [
    ("1::2::x::978300760", "column 'rating' is not numeric on line 2"),
    ("1::2::5::99999999999", "timestamp out of range .* on line 2"),
    ("1::2::5::-5", "timestamp out of range"),
    ("1::2::5::978300760::7", "malformed line"),
])
def test_ml1m_bad_lines(tmp_path, line, match):
    write_ml1m(tmp_path)
    (tmp_path / "ratings.dat").write_text("1::2::5::978300760\n" + line + "\n")
    with pytest.raises(DataError, match=match):
        data.read_ml1m(tmp_path)


def test_non_utf8_names_line(tmp_path):
    (tmp_path / "ml-100k.inter").write_bytes(
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t881250949\n1\t\xff\t3\t881250949\n")
    (tmp_path / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\n2\tX\n")
    with pytest.raises(DataError, match=r"ml-100k.inter: not valid utf-8 text on line 3"):
        data.read_ml100k(tmp_path)


def test_misspelled_column(tmp_path):
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem:token\trating:float\ttimestamp:float\n1\t2\t3\t4\n")
    (tmp_path / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\n2\tX\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['item_id:token'\]"):
        data.read_ml100k(tmp_path)


def test_items_without_titles(tmp_path):
    folder = write_ml1m(tmp_path)
    (folder / "movies.dat").write_text("100::Alpha::Drama\n")
    with pytest.raises(DataError, match=r"item\(s\) have no title"):
        data.prepare(data.read_ml1m(folder), "ml-1m")
    p = Protocol("ml-1m", split="months", missing_titles="empty")
    prep = data.prepare(data.read_ml1m(folder), p)
    assert prep.meta["skipped"]["items_without_title"] == 5


def test_no_rows_in_split_periods(tmp_path):
    (tmp_path / "ratings.dat").write_text(f"1::100::5::{ts('2000-04-01')}\n")
    (tmp_path / "movies.dat").write_text("100::A::Drama\n")
    with pytest.raises(DataError, match="no rows fall into the ml-1m split periods"):
        data.prepare(data.read_ml1m(tmp_path), "ml-1m")


def test_protocol_validation():
    with pytest.raises(ValueError, match="split must be"):
        Protocol("x", split="random")
    with pytest.raises(ValueError, match="valid_small must be"):
        Protocol("x", valid_small=0)
    with pytest.raises(ValueError, match="protocol must be one of"):
        data.prepare(data.read_ml100k(), "ml-20m")


# ---------------------------------------------------------------- per-user time split (ml-100k-user)


def test_user_time_split_rule_by_hand():
    users = np.array(["a", "b", "a", "c", "a", "b", "c", "a", "c"] + ["d"] * 10)
    ts_ = np.array([40, 1, 10, 7, 30, 2, 8, 20, 9] + [5, 5, 5, 5, 5, 6, 6, 6, 6, 6])
    flag = data.user_time_split(users, ts_)
    # a: n=4 -> n_test = n_valid = floor(0.6 + 0.5) = 1; in time order 10, 20 train, 30 valid, 40 test
    assert flag[[2, 7, 4, 0]].tolist() == [-1, -1, 0, 1]
    # b: n=2 < 3 -> all train; c: n=3 -> floor(0.45 + 0.5) = 0 -> all train
    assert flag[[1, 5, 3, 6, 8]].tolist() == [-1] * 5
    # d: n=10 -> floor(1.5 + 0.5) = 2 each; equal timestamps keep the row order
    assert flag[9:].tolist() == [-1] * 6 + [0, 0, 1, 1]


@pytest.mark.parametrize("n,want", [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (3, 0, 0)), (4, (2, 1, 1)),
                                    (9, (7, 1, 1)), (10, (6, 2, 2)), (16, (12, 2, 2)), (17, (11, 3, 3)),
                                    (20, (14, 3, 3)), (100, (70, 15, 15)), (101, (71, 15, 15))])
def test_user_time_split_sizes(n, want):
    flag = data.user_time_split(np.zeros(n, int), np.arange(n)[::-1])  # reversed: latest rows first
    assert (int((flag == -1).sum()), int((flag == 0).sum()), int((flag == 1).sum())) == want
    # the latest ratings (the first rows here) are the test rows
    assert (flag[:want[2]] == 1).all()


def test_ml100k_user_protocol_by_hand():
    rows = [  # user, item, rating, time; given out of time order
        ("2", "A", 4, 40), ("1", "A", 5, 10), ("1", "B", 3, 20), ("2", "B", 4, 10), ("1", "D", 5, 40),
        ("1", "C", 4, 30), ("2", "C", 2, 20), ("2", "E", 2, 30), ("3", "E", 5, 10), ("3", "A", 1, 20),
    ]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    frame["rating"] = frame["rating"].astype(float)
    titles = pd.Series({k: f"T{k}" for k in "ABCDE"})
    prep = data.prepare(data.Ratings(frame, titles, "hand"), "ml-100k-user")
    r = prep.rows
    assert r["uid"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    assert prep.item_ids.tolist() == ["", "A", "B", "C", "D", "E"]
    assert r["iid"].tolist() == [1, 2, 3, 4, 2, 3, 5, 1, 5, 1]
    assert r["label"].tolist() == [1, 0, 1, 1, 1, 0, 0, 1, 1, 0]
    # users 1 and 2 (4 ratings): 2 train, 1 valid, 1 test; user 3 (2 ratings): all train
    assert r["flag"].tolist() == [-1, -1, 0, 1, -1, -1, 0, 1, -1, -1]
    assert [h.tolist() for h in prep.history(np.arange(10))] == [[], [1], [1], [1, 3], [], [2], [2], [2], [],
                                                                 [5]]
    # train items A, B, C, E; D (user 1's test item) is cold
    assert r["not_cold"].tolist() == [True] * 3 + [False] + [True] * 6
    assert r["valid_small"].sum() == 1 and r["valid_small"].to_numpy()[r["flag"].to_numpy() != 0].sum() == 0
    assert prep.meta["protocol_name"] == "ml-100k-user" and prep.meta["source"] == "hand"
    assert prep.domain == "movie"


def test_ml100k_user_embedded():
    prep = data.prepare(data.read_ml100k(), "ml-100k-user")
    c = prep.counts()
    r = prep.rows
    assert c["train"]["rows"] + c["valid"]["rows"] + c["test"]["rows"] == 100_000
    assert c["test"]["users"] == 943 and c["valid"]["users"] == 943  # every ML-100K user has >= 20 ratings
    assert c["test"]["warm_share"] > 0.99
    # per user: every train rating is no later than every valid one, and valid no later than test
    g = r.groupby("uid")
    t, f = r["timestamp"], r["flag"]
    assert (t[f == -1].groupby(r["uid"]).max() <= t[f == 0].groupby(r["uid"]).min()).all()
    assert (t[f == 0].groupby(r["uid"]).max() <= t[f == 1].groupby(r["uid"]).min()).all()
    n = g.size()
    assert ((f == 1).groupby(r["uid"]).sum() == np.floor(0.15 * n + 0.5 + 1e-9).astype(int)).all()


def test_default_protocol():
    assert data.default_protocol("ml-100k") == "ml-100k-user"
    assert data.default_protocol("ml-1m") == "ml-1m"
    assert data.default_protocol("amazon-book") == "amazon-book"
    assert data.default_protocol("table") == "ml-100k"
    with pytest.raises(ValueError, match="source must be one of"):
        data.default_protocol("ml-20m")


# ---------------------------------------------------------------- domain


def test_domain_recorded_and_read_back(tmp_path):
    prep = data.prepare(data.read_ml1m(write_ml1m(tmp_path / "src")), "ml-1m")
    assert prep.meta["domain"] == "movie" and prep.meta["protocol_name"] == "ml-1m"
    assert prep.meta["source"] == "ml-1m"
    assert data.PROTOCOLS["amazon-book"].domain == "book"
    prep.save(tmp_path / "p")
    back = data.load_prepared(tmp_path / "p")
    assert back.domain == "movie"
    book = Protocol("my-books", split="months", domain="book")
    assert data.prepare(data.read_ml1m(tmp_path / "src"), book).domain == "book"
    with pytest.raises(ValueError, match="domain must be a word"):
        Protocol("x", domain="")


def test_domain_of_old_folders(tmp_path):
    prep = data.prepare(data.read_ml1m(write_ml1m(tmp_path / "src")), "ml-1m")
    for key in ("domain", "protocol_name"):
        del prep.meta[key]
    prep.save(tmp_path / "old")
    assert data.load_prepared(tmp_path / "old").domain == "movie"  # protocol ml-1m
    prep.meta["protocol"]["name"] = "amazon-book"
    prep.save(tmp_path / "old")
    with pytest.raises(DataError, match="--domain movie or --domain book"):
        _ = data.load_prepared(tmp_path / "old").domain
