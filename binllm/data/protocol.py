"""The protocol: the rules that turn :class:`~binllm.data.readers.Ratings`
into CTR rows — label rule, split, (user, timestamp) order, id remap by first
appearance (0 = padding), histories of earlier liked items across all splits,
``valid_small`` and warm/cold flags.

:data:`PROTOCOLS` names the published settings (ML-1M month slots, Amazon-Book
2017) and the two ML-100K splits; :func:`prepare` applies one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from binllm.data.prepared import FORMAT_VERSION, SPLITS, WARM_DEFINITION, Prepared, file_hash, finish_rows
from binllm.data.readers import DataError, Ratings, check_missing_titles


@dataclass
class Protocol:
    """The rules that turn ratings into CTR rows.

    Args:
        name: protocol name for the metadata.
        label_min: label = 1 iff rating >= label_min (ML: 4; Amazon-Book: 5).
        split: ``"months"`` (ML-1M month slots), ``"year_december"`` (Amazon-Book),
            ``"quantile"`` (global time quantiles) or ``"user_time"`` (each
            user's own ratings in time order, ties in file order: the last
            ``n_test = floor(f_test * n + 0.5)`` test, the ``n_valid =
            floor(f_valid * n + 0.5)`` before them valid, the rest train; users
            with fewer than `user_min_ratings` ratings all train; see
            :func:`user_time_split`).
        train_slots, valid_slots, test_slots: inclusive month-slot ranges for ``"months"``.
        year: the calendar year kept by ``"year_december"``.
        min_count: ``"year_december"`` keeps users and items with more than this many ratings (one pass).
        quantiles: ``"quantile"`` cut points (train up to the first, valid up to the second).
        user_fractions: ``"user_time"``: the (valid, test) shares of each user's ratings.
        user_min_ratings: ``"user_time"``: users with fewer ratings go entirely to train.
        valid_small: fraction of valid rows in ``valid_small`` (fixed seed).
        history_len: how many of the latest liked items each row stores (prompts use <= 10).
        missing_titles: ``"error"`` or ``"empty"`` (keep the item with an empty title, counted).
        seed: seed of the ``valid_small`` draw.
        domain: what the items are, for prompt wording (``"movie"``, ``"book"``).
        rating_range: inclusive (low, high) of accepted ratings; a rating outside
            it (or NaN/inf) is a :class:`DataError` naming the row.
    """

    name: str
    label_min: float = 4
    split: str = "quantile"
    train_slots: tuple[int, int] = (14, 23)
    valid_slots: tuple[int, int] = (24, 28)
    test_slots: tuple[int, int] = (29, 33)
    year: int = 2017
    min_count: int = 20
    quantiles: tuple[float, float] = (0.70, 0.85)
    user_fractions: tuple[float, float] = (0.15, 0.15)
    user_min_ratings: int = 3
    valid_small: float = 0.5
    history_len: int = 20
    missing_titles: str = "error"
    seed: int = 0
    domain: str = "movie"
    rating_range: tuple[float, float] = (0.0, 5.0)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string; got {self.name!r}")
        if self.split not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {', '.join(map(repr, SPLIT_KINDS))}; got {self.split!r}")
        if not 0 < self.valid_small <= 1:
            raise ValueError(f"valid_small must be in (0, 1]; got {self.valid_small}")
        if not 0 < self.quantiles[0] < self.quantiles[1] < 1:
            raise ValueError(f"quantiles must satisfy 0 < q1 < q2 < 1; got {self.quantiles}")
        fv, ft = self.user_fractions
        if not (0 <= fv < 1 and 0 <= ft < 1 and fv + ft < 1):
            raise ValueError(f"user_fractions (valid, test) must be in [0, 1) with a sum below 1; "
                             f"got {self.user_fractions}")
        if self.user_min_ratings < 1:
            raise ValueError(f"user_min_ratings must be >= 1; got {self.user_min_ratings}")
        if self.history_len < 1:
            raise ValueError(f"history_len must be >= 1; got {self.history_len}")
        check_missing_titles(self.missing_titles)
        if not isinstance(self.domain, str) or not self.domain.isidentifier():
            raise ValueError(f"domain must be a word such as 'movie' or 'book'; got {self.domain!r}")
        lo, hi = self.rating_range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise ValueError(f"rating_range must be finite (low, high) with low <= high; got {self.rating_range}")


SPLIT_KINDS = ("months", "year_december", "quantile", "user_time")

PROTOCOLS: dict[str, Protocol] = {
    # ML-100K has no published BinLLM split; two are offered.
    # Global time quantiles 70/15/15, earliest first: leakage-free, but most test users are cold.
    "ml-100k": Protocol("ml-100k", label_min=4, split="quantile", valid_small=0.5, domain="movie"),
    # Each user's own ratings in time order, 70/15/15 (see user_time_split): almost all test rows warm.
    "ml-100k-user": Protocol("ml-100k-user", label_min=4, split="user_time", user_fractions=(0.15, 0.15),
                             user_min_ratings=3, valid_small=0.5, domain="movie"),
    "ml-1m": Protocol("ml-1m", label_min=4, split="months", valid_small=0.5, domain="movie"),
    "amazon-book": Protocol("amazon-book", label_min=5, split="year_december", year=2017, min_count=20,
                            valid_small=0.25, domain="book"),
}

# The protocol each named source gets unless one is chosen (see default_protocol).
_DEFAULT_PROTOCOL = {"ml-100k": "ml-100k-user", "ml-1m": "ml-1m", "amazon-book": "amazon-book",
                     "table": "ml-100k"}


def default_protocol(source: str) -> str:
    """The protocol name used for a :func:`~binllm.data.sources.load_source` source.

    ``'ml-100k'`` (the embedded demonstration) gets the per-user time split
    ``'ml-100k-user'``; ``'ml-1m'`` and ``'amazon-book'`` their published
    protocols; a generic ``'table'`` the global time split ``'ml-100k'``
    (leakage-free, MovieLens label rule).

    Raises:
        ValueError: an unknown source.
    """
    if source not in _DEFAULT_PROTOCOL:
        raise ValueError(f"source must be one of {sorted(_DEFAULT_PROTOCOL)}; got {source!r}")
    return _DEFAULT_PROTOCOL[source]


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # the epsilon keeps exact halves (0.15 * 10) from falling below .5 in binary floating point
    return np.floor(x + 0.5 + 1e-9).astype(np.int64)


def user_time_split(users: np.ndarray, timestamps: np.ndarray, fractions: tuple[float, float] = (0.15, 0.15),
                    min_ratings: int = 3) -> np.ndarray:
    """The per-user time split (protocol ``ml-100k-user``): flag per row, -1 train, 0 valid, 1 test.

    Exact rules:

    * each user's ratings are put in time order; equal timestamps keep the
      order of the rows as given (after duplicates are dropped, that is the
      file order);
    * a user with n ratings gets ``n_test = floor(0.15 n + 0.5)`` and
      ``n_valid = floor(0.15 n + 0.5)`` (rounding half up, with the default
      `fractions` (valid, test) = (0.15, 0.15)); the rest,
      ``n_train = n - n_valid - n_test``, is train;
    * the last ``n_test`` ratings are test, the ``n_valid`` before them valid,
      the first ``n_train`` train;
    * a user with fewer than `min_ratings` (3) ratings goes entirely to train.

    So n = 3 gives 3/0/0, n = 4..9 1 valid and 1 test, n = 10..16 2 and 2,
    n = 20 14/3/3. Other users' later ratings can be in train (the split is not
    global in time).

    Args:
        users: (n,) user ids, any hashable dtype.
        timestamps: (n,) int64 seconds.
    """
    users, timestamps = np.asarray(users), np.asarray(timestamps)
    codes, uniq = pd.factorize(users)
    order = np.lexsort((timestamps, codes))  # stable: ties keep the given order
    size = np.bincount(codes, minlength=len(uniq))
    sorted_codes = codes[order]
    starts = np.r_[0, np.cumsum(size)[:-1]]
    rank = np.arange(len(order)) - starts[sorted_codes]  # position within the user's time order
    n = size[sorted_codes]
    n_test = _round_half_up(fractions[1] * n)
    n_valid = _round_half_up(fractions[0] * n)
    from_end = n - 1 - rank
    flag_sorted = np.where(from_end < n_test, 1, np.where(from_end < n_test + n_valid, 0, -1)).astype(np.int8)
    flag_sorted[n < min_ratings] = -1
    flag = np.empty(len(order), np.int8)
    flag[order] = flag_sorted
    return flag


def _assign_splits(frame: pd.DataFrame, p: Protocol, info: dict) -> np.ndarray:
    """flag per row: -1 train, 0 valid, 1 test, 2 dropped."""
    ts = frame["timestamp"].to_numpy()
    flag = np.full(len(frame), 2, np.int8)
    if p.split == "months":
        dt = pd.to_datetime(ts, unit="s", utc=True)
        slot = (dt.year.to_numpy() - 2000) * 12 + dt.month.to_numpy()
        slot = slot - slot.min()
        for f, (a, b) in ((-1, p.train_slots), (0, p.valid_slots), (1, p.test_slots)):
            flag[(slot >= a) & (slot <= b)] = f
        first = dt[np.argmin(ts)]
        info["slot0"] = f"{first.year}-{first.month:02d}"
        info["slots"] = {"train": list(p.train_slots), "valid": list(p.valid_slots), "test": list(p.test_slots)}
    elif p.split == "year_december":
        dt = pd.to_datetime(ts, unit="s", utc=True)
        in_year = dt.year.to_numpy() == p.year
        users, items = frame["user"].to_numpy(), frame["item"].to_numpy()
        uc = pd.Series(users[in_year]).value_counts()
        ic = pd.Series(items[in_year]).value_counts()
        keep = in_year & (pd.Series(users).map(uc).fillna(0).to_numpy() > p.min_count) & \
            (pd.Series(items).map(ic).fillna(0).to_numpy() > p.min_count)
        month = dt.month.to_numpy()
        flag[keep & (month <= 11)] = -1
        dec = np.flatnonzero(keep & (month == 12))
        dec = dec[np.argsort(ts[dec], kind="stable")]
        half = len(dec) // 2
        flag[dec[:half]] = 0
        flag[dec[half:]] = 1
        info["year"] = p.year
        info["min_count"] = p.min_count
        if len(dec):
            info["valid_test_cut"] = int(ts[dec[half]]) if half < len(dec) else None
    elif p.split == "user_time":
        flag = user_time_split(frame["user"].to_numpy(), ts, p.user_fractions, p.user_min_ratings)
        info["user_fractions"] = {"valid": p.user_fractions[0], "test": p.user_fractions[1]}
        info["user_min_ratings"] = p.user_min_ratings
        info["rule"] = ("per user, in time order (ties: row order): n_test = n_valid = floor(share * n + 0.5), "
                        "last n_test rows test, the n_valid before them valid, the rest train; "
                        f"users with < {p.user_min_ratings} ratings all train")
    else:
        order = np.sort(ts)
        c1 = order[min(len(order) - 1, int(np.floor(p.quantiles[0] * len(order))))]
        c2 = order[min(len(order) - 1, int(np.floor(p.quantiles[1] * len(order))))]
        flag[ts < c1] = -1
        flag[(ts >= c1) & (ts < c2)] = 0
        flag[ts >= c2] = 1
        info["quantiles"] = list(p.quantiles)
        info["cuts"] = {"valid_from": int(c1), "test_from": int(c2),
                        "valid_from_utc": str(pd.Timestamp(int(c1), unit="s", tz="UTC")),
                        "test_from_utc": str(pd.Timestamp(int(c2), unit="s", tz="UTC"))}
    return flag


def _histories(uid: np.ndarray, iid: np.ndarray, label: np.ndarray, length: int):
    """Latest <= `length` liked items before each row of the same user (rows sorted by user, time).

    Returns (offsets int64 (n+1,), values int32, counts int32 (n,) of all earlier likes)."""
    n = len(uid)
    lab = label.astype(np.int64)
    cum_excl = np.cumsum(lab) - lab  # likes before row r, counted over all users
    starts = np.r_[0, np.flatnonzero(np.diff(uid)) + 1] if n else np.zeros(0, np.int64)
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    user_first = cum_excl[starts][group] if n else cum_excl
    end = cum_excl
    begin = np.maximum(user_first, end - length)
    lengths = (end - begin).astype(np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    liked = iid[label == 1]
    pos = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - begin, lengths)
    return offsets, liked[pos].astype(np.int32), (end - user_first).astype(np.int32)


def _check_ratings(frame: pd.DataFrame, p: Protocol, source: str) -> None:
    """NaN/inf or out-of-range ratings would silently become labels: refuse them, naming the row."""
    r = frame["rating"].to_numpy(dtype=np.float64)
    lo, hi = p.rating_range
    bad = ~np.isfinite(r) | (r < lo) | (r > hi)
    if bad.any():
        i = int(np.argmax(bad))
        row = frame.iloc[i]
        what = "not finite" if not np.isfinite(r[i]) else f"outside the range [{lo:g}, {hi:g}] of protocol {p.name!r}"
        raise DataError(f"{source}: rating {float(r[i])!r} of row {i} (user {row['user']!r}, item {row['item']!r}) is "
                        f"{what}; {int(bad.sum())} such row(s)")


def prepare(ratings: Ratings, protocol: Protocol | str) -> Prepared:
    """Applies `protocol` (a :class:`Protocol` or a name in :data:`PROTOCOLS`) to `ratings`.

    Raises:
        DataError: no ratings; a non-finite or out-of-range rating (the row is
            named); no row in the split periods; an empty train or valid split, or
            one whose rows all have one label;
            items without a title while ``missing_titles='error'``.
    """
    if isinstance(protocol, str) and protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)} or a Protocol; got {protocol!r}")
    p = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    frame = ratings.frame
    if len(frame) == 0:
        raise DataError(f"{ratings.source}: no ratings")
    _check_ratings(frame, p, ratings.source)
    skipped = dict(ratings.skipped)
    dup = frame.duplicated(["user", "item", "timestamp"]).to_numpy()
    skipped["duplicate_rows"] = int(dup.sum())
    if dup.any():
        frame = frame[~dup]
    info: dict[str, Any] = {}
    flag = _assign_splits(frame, p, info)
    keep = flag != 2
    frame = frame[keep]
    flag = flag[keep]
    skipped["outside_split_periods"] = int((~keep).sum())
    if len(frame) == 0:
        raise DataError(f"{ratings.source}: no rows fall into the {p.name} split periods")
    # all rows of all splits, ordered by (user, time); ties keep the file order
    users = frame["user"].to_numpy()
    numeric = pd.to_numeric(pd.Series(users), errors="coerce")
    user_key = numeric.to_numpy() if not numeric.isna().any() else users  # MovieLens ids sort as numbers
    order = np.lexsort((frame["timestamp"].to_numpy(), user_key))
    frame = frame.iloc[order]
    flag = flag[order]
    n_split = {name: int((flag == f).sum()) for name, f in SPLITS.items()}
    for name in ("train", "valid"):
        if n_split[name] == 0:
            raise DataError(f"{ratings.source}: the {name} split of protocol {p.name!r} is empty "
                            f"(train/valid/test rows: {n_split['train']}/{n_split['valid']}/{n_split['test']}); "
                            "the data cannot be used for training and model selection")
    ucodes, uniq_users = pd.factorize(frame["user"].to_numpy())
    icodes, uniq_items = pd.factorize(frame["item"].to_numpy())
    uid, iid = (ucodes + 1).astype(np.int32), (icodes + 1).astype(np.int32)
    label = (frame["rating"].to_numpy() >= p.label_min).astype(np.int8)
    for name in ("train", "valid"):  # AUC, the training signal and model selection need both labels
        split_labels = label[flag == SPLITS[name]]
        if split_labels.min() == split_labels.max():
            raise DataError(f"{ratings.source}: every row of the {name} split of protocol {p.name!r} is "
                            f"{'positive' if split_labels[0] else 'negative'} (rating >= {p.label_min:g} is "
                            "positive); training and model selection need both labels")
    offsets, values, counts = _histories(uid, iid, label, p.history_len)

    titles = pd.Series(uniq_items).map(ratings.titles)
    missing = titles.isna().to_numpy()
    if missing.any():
        if p.missing_titles == "error":
            ex = list(uniq_items[missing][:5])
            raise DataError(f"{ratings.source}: {int(missing.sum())} rated item(s) have no title, e.g. {ex} "
                            "(pass --missing-titles empty / missing_titles='empty' to keep them with empty titles)")
        skipped["items_without_title"] = int(missing.sum())
    item_titles = np.r_[[""], titles.fillna("").astype(str).to_numpy()].astype(object)

    rows = finish_rows(uid, iid, label, frame["timestamp"].to_numpy(), flag, counts, len(uniq_users) + 1,
                        len(uniq_items) + 1, p.valid_small, p.seed)
    meta = {
        "format_version": FORMAT_VERSION,
        "source": ratings.source,
        "protocol_name": p.name,
        "domain": p.domain,
        "protocol": dataclasses.asdict(p),
        "split_info": info,
        "skipped": skipped,
        "files": {f: file_hash(f) for f in ratings.files},
        "n_users": len(uniq_users),
        "n_items": len(uniq_items),
        "warm_definition": WARM_DEFINITION,
    }
    prep = Prepared(rows, offsets, values, item_titles, np.r_[[""], uniq_users].astype(object),
                    np.r_[[""], uniq_items].astype(object), meta)
    prep.meta["counts"] = prep.counts()
    return prep
