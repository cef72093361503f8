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

from .prepared import FORMAT_VERSION, WARM_DEFINITION, Prepared, _file_hash, _finish_rows
from .readers import DataError, Ratings

@dataclass
class Protocol:
    """The rules that turn ratings into CTR rows.

    Args:
        name: protocol name for the metadata.
        label_min: label = 1 iff rating >= label_min (ML: 4; Amazon-Book: 5).
        split: ``"months"`` (ML-1M month slots), ``"year_december"`` (Amazon-Book)
            or ``"quantile"`` (global time quantiles).
        train_slots, valid_slots, test_slots: inclusive month-slot ranges for ``"months"``.
        year: the calendar year kept by ``"year_december"``.
        min_count: ``"year_december"`` keeps users and items with more than this many ratings (one pass).
        quantiles: ``"quantile"`` cut points (train up to the first, valid up to the second).
        valid_small: fraction of valid rows in ``valid_small`` (fixed seed).
        history_len: how many of the latest liked items each row stores (prompts use <= 10).
        missing_titles: ``"error"`` or ``"empty"`` (keep the item with an empty title, counted).
        seed: seed of the ``valid_small`` draw.
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
    valid_small: float = 0.5
    history_len: int = 20
    missing_titles: str = "error"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in ("months", "year_december", "quantile"):
            raise ValueError(f"split must be 'months', 'year_december' or 'quantile'; got {self.split!r}")
        if not 0 < self.valid_small <= 1:
            raise ValueError(f"valid_small must be in (0, 1]; got {self.valid_small}")
        if not 0 < self.quantiles[0] < self.quantiles[1] < 1:
            raise ValueError(f"quantiles must satisfy 0 < q1 < q2 < 1; got {self.quantiles}")
        if self.history_len < 1:
            raise ValueError(f"history_len must be >= 1; got {self.history_len}")
        if self.missing_titles not in ("error", "empty"):
            raise ValueError(f"missing_titles must be 'error' or 'empty'; got {self.missing_titles!r}")


PROTOCOLS: dict[str, Protocol] = {
    # ML-100K has no published BinLLM split: global time quantiles 70/15/15, earliest first.
    "ml-100k": Protocol("ml-100k", label_min=4, split="quantile", valid_small=0.5),
    "ml-1m": Protocol("ml-1m", label_min=4, split="months", valid_small=0.5),
    "amazon-book": Protocol("amazon-book", label_min=5, split="year_december", year=2017, min_count=20,
                            valid_small=0.25),
}


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


def prepare(ratings: Ratings, protocol: Protocol | str) -> Prepared:
    """Applies `protocol` to `ratings` (see the module docstring)."""
    if isinstance(protocol, str) and protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)} or a Protocol; got {protocol!r}")
    p = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    frame = ratings.frame
    if len(frame) == 0:
        raise DataError(f"{ratings.source}: no ratings")
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
    ucodes, uniq_users = pd.factorize(frame["user"].to_numpy())
    icodes, uniq_items = pd.factorize(frame["item"].to_numpy())
    uid, iid = (ucodes + 1).astype(np.int32), (icodes + 1).astype(np.int32)
    label = (frame["rating"].to_numpy() >= p.label_min).astype(np.int8)
    offsets, values, counts = _histories(uid, iid, label, p.history_len)

    titles = pd.Series(uniq_items).map(ratings.titles)
    missing = titles.isna().to_numpy()
    if missing.any():
        if p.missing_titles == "error":
            ex = list(uniq_items[missing][:5])
            raise DataError(f"{ratings.source}: {int(missing.sum())} rated item(s) have no title, e.g. {ex} "
                            "(pass missing_titles='empty' to keep them with empty titles)")
        skipped["items_without_title"] = int(missing.sum())
    item_titles = np.r_[[""], titles.fillna("").astype(str).to_numpy()].astype(object)

    rows = _finish_rows(uid, iid, label, frame["timestamp"].to_numpy(), flag, counts, len(uniq_users) + 1,
                        len(uniq_items) + 1, p.valid_small, p.seed)
    meta = {
        "format_version": FORMAT_VERSION,
        "source": ratings.source,
        "protocol": dataclasses.asdict(p),
        "split_info": info,
        "skipped": skipped,
        "files": {f: _file_hash(f) for f in ratings.files},
        "n_users": int(len(uniq_users)),
        "n_items": int(len(uniq_items)),
        "warm_definition": WARM_DEFINITION,
    }
    prep = Prepared(rows, offsets, values, item_titles, np.r_[[""], uniq_users].astype(object),
                    np.r_[[""], uniq_items].astype(object), meta)
    prep.meta["counts"] = prep.counts()
    return prep
