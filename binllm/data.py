"""Recommendation logs in, time-split CTR rows with histories out.

Implements the BinLLM data protocol (shared METHOD.md section 1):

* readers turn a source (ML-100K atomic files, ML-1M ``.dat`` files or zip,
  Amazon 2018 JSON lines, a generic CSV/Parquet, or the reference pickles)
  into :class:`Ratings` — one frame ``user, item, rating, timestamp`` plus
  item titles;
* :func:`prepare` applies a :class:`Protocol` — label rule, time split,
  (user, timestamp) order, id remap by first appearance (0 = padding),
  histories of earlier liked items across all splits, ``valid_small`` and
  warm/cold flags — and returns a :class:`Prepared` dataset;
* :meth:`Prepared.save` writes the one on-disk format every later stage reads
  (``rows.parquet``, ``items.parquet``, ``users.parquet``, ``meta.json``),
  atomically; :func:`load_prepared` reads it back and checks it.

Everything is vectorised (numpy/pandas/pyarrow); Amazon files are streamed
and filtered batch by batch so 27M reviews never sit in memory at once.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

FORMAT_VERSION = 1
SPLITS = {"train": -1, "valid": 0, "test": 1}
# Timestamps outside [1970, 2100) are taken as a unit or parsing error, never silently split.
_TS_MIN, _TS_MAX = 0, 4_102_444_800


class DataError(ValueError):
    """Bad input data: the message names the file, line or column."""


# ====================================================================== raw ratings


@dataclass
class Ratings:
    """Raw interactions before the protocol.

    Attributes:
        frame: columns ``user`` and ``item`` (raw ids as str), ``rating``
            (float64) and ``timestamp`` (int64 seconds since the epoch, UTC).
        titles: item title by raw item id (str index).
        source: a name for the metadata (``ml-100k``, ``ml-1m``, ...).
        files: the input files, hashed into the metadata.
        skipped: counts of rows dropped on purpose while reading, by reason.
    """

    frame: pd.DataFrame
    titles: pd.Series
    source: str
    files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def _find_package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; install its data with: pip install --no-deps {name}"
            + ("==1.2.1" if name == "recbole" else "")
        )
    return Path(spec.submodule_search_locations[0])


def ml100k_dir() -> Path:
    """The MovieLens-100K atomic files shipped in recbole's package data (located, never imported)."""
    return _find_package_dir("recbole") / "dataset_example" / "ml-100k"


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def _check_frame(frame: pd.DataFrame, where: str, line_offset: int = 2) -> pd.DataFrame:
    """Types and ranges of a raw ratings frame; `line_offset` maps row 0 to its file line."""
    if len(frame) == 0:
        raise DataError(f"{where}: no ratings")
    for col in ("user", "item"):
        bad = frame[col].isna().to_numpy()
        if bad.any():
            raise DataError(f"{where}: empty {col} id on line {int(np.argmax(bad)) + line_offset}")
    for col in ("rating", "timestamp"):
        num = pd.to_numeric(frame[col], errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{where}: column {col!r} is not numeric on line {i + line_offset}: {frame[col].iloc[i]!r}")
        frame[col] = num
    ts = frame["timestamp"].to_numpy()
    bad = (ts < _TS_MIN) | (ts >= _TS_MAX)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: timestamp out of range (seconds since 1970 expected) on line "
                        f"{i + line_offset}: {ts[i]!r}")
    out = pd.DataFrame({
        "user": frame["user"].astype(str).to_numpy(),
        "item": frame["item"].astype(str).to_numpy(),
        "rating": frame["rating"].astype(np.float64).to_numpy(),
        "timestamp": frame["timestamp"].astype(np.int64).to_numpy(),
    })
    return out


def _read_text(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not valid {encoding} text on line {line} (byte {e.start})") from None


def _read_delimited(text: str, path: Path, sep: str, names: list[str], header: bool) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, names=names, header=0 if header else None, dtype=str,
                           keep_default_na=False, na_values=[""], engine="c", quoting=3)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed line ({e})") from None


def read_ml100k(folder: str | os.PathLike | None = None) -> Ratings:
    """MovieLens-100K in recbole's atomic format (``ml-100k.inter`` + ``ml-100k.item``).

    Titles become ``"<movie_title> (<release_year>)"`` as in the original ``u.item``.
    """
    folder = Path(folder) if folder is not None else ml100k_dir()
    inter = _require_file(folder / "ml-100k.inter", "MovieLens-100K ratings (ml-100k.inter)")
    item = _require_file(folder / "ml-100k.item", "MovieLens-100K items (ml-100k.item)")
    text = _read_text(inter, "utf-8")
    header = text.split("\n", 1)[0].split("\t")
    want = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    missing = [c for c in want if c not in header]
    if missing:
        raise DataError(f"{inter}: missing column(s) {missing}; found {header}")
    df = _read_delimited(text, inter, "\t", header, header=True)
    frame = _check_frame(df.rename(columns={"user_id:token": "user", "item_id:token": "item",
                                            "rating:float": "rating", "timestamp:float": "timestamp"}), str(inter))
    itext = _read_text(item, "utf-8")
    iheader = itext.split("\n", 1)[0].split("\t")
    for c in ("item_id:token", "movie_title:token_seq"):
        if c not in iheader:
            raise DataError(f"{item}: missing column {c!r}; found {iheader}")
    items = _read_delimited(itext, item, "\t", iheader, header=True)
    title = items["movie_title:token_seq"].fillna("").str.strip()
    if "release_year:token" in iheader:
        year = items["release_year:token"].fillna("")
        title = title.where(year == "", title + " (" + year + ")")
    titles = pd.Series(title.to_numpy(), index=items["item_id:token"].astype(str).to_numpy())
    return Ratings(frame, titles, "ml-100k", [str(inter), str(item)])


def _open_member(path: Path, name: str) -> tuple[bytes, str]:
    """Bytes of `name` from a folder or a GroupLens zip, and a display path."""
    if path.is_dir():
        f = _require_file(path / name, f"MovieLens-1M {name}")
        return f.read_bytes(), str(f)
    if path.suffix == ".zip":
        if not path.is_file():
            raise FileNotFoundError(f"MovieLens-1M zip not found: {path}")
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
            if not members:
                raise FileNotFoundError(f"{path}: no {name} inside the zip")
            return z.read(members[0]), f"{path}:{members[0]}"
    raise FileNotFoundError(f"MovieLens-1M path must be a folder or a .zip: {path}")


def read_ml1m(path: str | os.PathLike) -> Ratings:
    """MovieLens-1M ``ratings.dat`` + ``movies.dat`` (latin-1), from the folder or the GroupLens zip."""
    path = Path(path)
    raw, rname = _open_member(path, "ratings.dat")
    if not raw.strip():
        raise DataError(f"{rname}: the file is empty")
    text = raw.decode("latin-1").replace("::", "\t")
    df = _read_delimited(text, Path(rname), "\t", ["user", "item", "rating", "timestamp"], header=False)
    frame = _check_frame(df, rname, line_offset=1)
    mraw, mname = _open_member(path, "movies.dat")
    rows = [line.split("::") for line in mraw.decode("latin-1").splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != 3), None)
    if bad is not None:
        raise DataError(f"{mname}: line {bad + 1} does not have 3 '::'-separated fields")
    titles = pd.Series([r[1] for r in rows], index=[r[0] for r in rows])
    return Ratings(frame, titles, "ml-1m", [rname, mname])


def _json_batches(path: Path, columns: dict[str, Any], block_size: int) -> Iterable[Any]:
    """Streams a JSON-lines file (optionally .gz) as pyarrow record batches of `columns` only."""
    import pyarrow as pa
    import pyarrow.json as pj

    schema = pa.schema([(k, v) for k, v in columns.items()])
    source: Any = pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None)
    try:
        reader = pj.open_json(source, read_options=pj.ReadOptions(block_size=block_size),
                              parse_options=pj.ParseOptions(explicit_schema=schema,
                                                            unexpected_field_behavior="ignore"))
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            yield batch
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: malformed JSON lines ({e})") from None
    finally:
        source.close()


def read_amazon(reviews: str | os.PathLike, meta: str | os.PathLike, year: int | None = None,
                block_size: int = 1 << 24, progress: bool = True) -> Ratings:
    """Amazon 2018 reviews (``overall, reviewerID, asin, unixReviewTime``) and metadata
    (``asin, title``) as JSON lines, ``.json`` or ``.json.gz``.

    Streamed in blocks; with `year` only that calendar year (UTC) is kept while
    reading, and metadata is kept only for items that occur in the kept reviews.
    Reviews missing a field and items without a title are skipped and counted.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from tqdm.auto import tqdm

    reviews, meta = Path(reviews), Path(meta)
    _require_file(reviews, "Amazon reviews file")
    _require_file(meta, "Amazon metadata file")
    cols = {"overall": pa.float64(), "reviewerID": pa.string(), "asin": pa.string(), "unixReviewTime": pa.int64()}
    parts, skipped, total = [], {"reviews_missing_fields": 0, "reviews_other_years": 0}, 0
    lo = hi = None
    if year is not None:
        lo = int(pd.Timestamp(f"{year}-01-01", tz="UTC").timestamp())
        hi = int(pd.Timestamp(f"{year + 1}-01-01", tz="UTC").timestamp())
    bar = tqdm(unit=" reviews", unit_scale=True, desc=f"read {reviews.name}", disable=None if progress else True)
    for batch in _json_batches(reviews, cols, block_size):
        total += batch.num_rows
        ok = pc.and_(pc.and_(pc.is_valid(batch["overall"]), pc.is_valid(batch["reviewerID"])),
                     pc.and_(pc.is_valid(batch["asin"]), pc.is_valid(batch["unixReviewTime"])))
        skipped["reviews_missing_fields"] += batch.num_rows - pc.sum(pc.cast(ok, pa.int64())).as_py() if batch.num_rows else 0
        b = batch.filter(ok)
        if year is not None:
            t = b["unixReviewTime"]
            keep = pc.and_(pc.greater_equal(t, lo), pc.less(t, hi))
            skipped["reviews_other_years"] += b.num_rows - pc.sum(pc.cast(keep, pa.int64())).as_py() if b.num_rows else 0
            b = b.filter(keep)
        parts.append(b)
        bar.update(batch.num_rows)
    bar.close()
    if total == 0:
        raise DataError(f"{reviews}: no reviews")
    table = pa.Table.from_batches(parts, schema=pa.schema(list(cols.items()))) if parts else None
    if table is None or table.num_rows == 0:
        raise DataError(f"{reviews}: no reviews left after filtering ({skipped})")
    frame = pd.DataFrame({
        "user": table["reviewerID"].to_numpy(zero_copy_only=False),
        "item": table["asin"].to_numpy(zero_copy_only=False),
        "rating": table["overall"].to_numpy(),
        "timestamp": table["unixReviewTime"].to_numpy(),
    })
    frame = _check_frame(frame, str(reviews))
    wanted = pa.array(pd.unique(frame["item"]))
    tparts = []
    for batch in _json_batches(meta, {"asin": pa.string(), "title": pa.string()}, block_size):
        tparts.append(batch.filter(pc.and_(pc.is_in(batch["asin"], value_set=wanted), pc.is_valid(batch["title"]))))
    mt = pa.Table.from_batches(tparts, schema=pa.schema([("asin", pa.string()), ("title", pa.string())]))
    titles = pd.Series(mt["title"].to_numpy(zero_copy_only=False), index=mt["asin"].to_numpy(zero_copy_only=False))
    titles = titles[~titles.index.duplicated(keep="first")]
    return Ratings(frame, titles, "amazon", [str(reviews), str(meta)], skipped)


def read_table(path: str | os.PathLike, user: str = "user", item: str = "item", rating: str = "rating",
               timestamp: str = "timestamp", title: str | None = None, titles_path: str | os.PathLike | None = None,
               titles_item: str | None = None, sep: str = ",", encoding: str = "utf-8") -> Ratings:
    """A generic CSV (or ``.parquet``) of ratings, with the column names given.

    Titles come from column `title` of the same file, or of `titles_path`
    (keyed by `titles_item`, default `item`). Timestamps may be seconds or
    date strings (parsed as UTC).
    """
    path = Path(path)
    _require_file(path, "ratings file")

    def load(p: Path) -> pd.DataFrame:
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        return _read_delimited(_read_text(p, encoding), p, sep, None, header=True)  # type: ignore[arg-type]

    df = load(path)
    need = [user, item, rating, timestamp] + ([title] if title and titles_path is None else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    ts = df[timestamp]
    if not pd.api.types.is_numeric_dtype(ts) and len(ts) and not str(ts.iloc[0]).lstrip("-").isdigit():
        parsed = pd.to_datetime(ts, utc=True, errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: column {timestamp!r} has an unparseable date on line {i + 2}: {ts.iloc[i]!r}")
        ts = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)  # any datetime resolution
    frame = _check_frame(pd.DataFrame({"user": df[user], "item": df[item], "rating": df[rating], "timestamp": ts}),
                         str(path))
    if titles_path is not None:
        tp = Path(titles_path)
        _require_file(tp, "titles file")
        tdf = load(tp)
        key = titles_item or item
        for c in (key, title or "title"):
            if c not in tdf.columns:
                raise DataError(f"{tp}: missing column {c!r}; found {list(tdf.columns)}")
        titles = pd.Series(tdf[title or "title"].astype(str).to_numpy(), index=tdf[key].astype(str).to_numpy())
    elif title is not None:
        titles = pd.Series(df[title].astype(str).to_numpy(), index=frame["item"].to_numpy())
    else:
        titles = pd.Series(dtype=str)
    titles = titles[~titles.index.duplicated(keep="first")]
    return Ratings(frame, titles, path.stem, [str(path)] + ([str(titles_path)] if titles_path else []))


# ====================================================================== protocol


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


def prepare(ratings: Ratings, protocol: Protocol | str, progress: bool = True) -> "Prepared":
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

    train = flag == -1
    utc = np.bincount(uid[train], minlength=len(uniq_users) + 1).astype(np.int32)
    itc = np.bincount(iid[train], minlength=len(uniq_items) + 1).astype(np.int32)
    rng = np.random.default_rng(p.seed)
    valid_rows = np.flatnonzero(flag == 0)
    small = np.zeros(len(flag), bool)
    small[rng.choice(valid_rows, size=int(np.floor(p.valid_small * len(valid_rows))), replace=False)] = True
    rows = pd.DataFrame({
        "uid": uid, "iid": iid, "label": label, "timestamp": frame["timestamp"].to_numpy(),
        "flag": flag, "his_count": counts, "user_train_count": utc[uid], "item_train_count": itc[iid],
        "not_cold": (utc[uid] > 0) & (itc[iid] > 0), "valid_small": small,
    })
    meta = {
        "format_version": FORMAT_VERSION,
        "source": ratings.source,
        "protocol": dataclasses.asdict(p),
        "split_info": info,
        "skipped": skipped,
        "files": {f: _file_hash(f) for f in ratings.files},
        "n_users": int(len(uniq_users)),
        "n_items": int(len(uniq_items)),
        "warm_definition": "warm = not_cold = user and item both occur in train; cold = the rest",
    }
    prep = Prepared(rows, offsets, values, item_titles, np.r_[[""], uniq_users].astype(object),
                    np.r_[[""], uniq_items].astype(object), meta)
    prep.meta["counts"] = prep.counts()
    return prep


def _file_hash(name: str) -> str | None:
    path = Path(name.split(":", 1)[0]) if not Path(name).exists() else Path(name)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ====================================================================== prepared data


@dataclass
class Prepared:
    """A prepared dataset: CTR rows of all splits plus the id maps.

    Attributes:
        rows: one row per interaction, sorted by (uid, timestamp): ``uid, iid``
            (int32, 1-based; 0 is padding), ``label`` (int8), ``timestamp``,
            ``flag`` (-1 train, 0 valid, 1 test), ``his_count`` (all earlier
            likes), ``user_train_count``, ``item_train_count``, ``not_cold``
            (user and item both in train), ``valid_small``.
        his_offsets, his_values: the latest liked items before each row, oldest
            first: row r's are ``his_values[his_offsets[r]:his_offsets[r+1]]``.
        titles: item title by iid (``titles[0] == ''``).
        user_ids, item_ids: raw id by uid / iid.
        meta: source, protocol, split cuts, skipped counts, file hashes, counts.
    """

    rows: pd.DataFrame
    his_offsets: np.ndarray
    his_values: np.ndarray
    titles: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    meta: dict

    @property
    def n_user_slots(self) -> int:
        """Size of a user embedding table (max uid + 1)."""
        return len(self.user_ids)

    @property
    def n_item_slots(self) -> int:
        return len(self.item_ids)

    def mask(self, split: str) -> np.ndarray:
        """Boolean row mask of 'train', 'valid', 'valid_small', 'test' or 'all'."""
        f = self.rows["flag"].to_numpy()
        if split == "all":
            return np.ones(len(f), bool)
        if split == "valid_small":
            return self.rows["valid_small"].to_numpy()
        if split not in SPLITS:
            raise ValueError(f"split must be one of train, valid, valid_small, test, all; got {split!r}")
        return f == SPLITS[split]

    def split(self, split: str) -> pd.DataFrame:
        """Rows of one split; the index keeps the row number for :meth:`history`."""
        return self.rows[self.mask(split)]

    def history(self, row_numbers: np.ndarray, length: int | None = None) -> list[np.ndarray]:
        """Liked items before each given row (latest `length`, oldest first)."""
        out = []
        for r in np.asarray(row_numbers):
            h = self.his_values[self.his_offsets[r]:self.his_offsets[r + 1]]
            out.append(h[-length:] if length else h)
        return out

    def counts(self) -> dict:
        """Rows, users, items, positive rate and warm share per split."""
        out: dict[str, Any] = {"user_slots": self.n_user_slots, "item_slots": self.n_item_slots}
        for s in ("train", "valid", "valid_small", "test"):
            r = self.split(s)
            out[s] = {
                "rows": int(len(r)),
                "users": int(r["uid"].nunique()),
                "items": int(r["iid"].nunique()),
                "positive_rate": float(r["label"].mean()) if len(r) else float("nan"),
                "warm_share": float(r["not_cold"].mean()) if len(r) else float("nan"),
            }
        return out

    def summary(self) -> str:
        """A markdown table of :meth:`counts`."""
        c = self.counts()
        lines = [f"{self.meta.get('source')} / {self.meta['protocol']['name']}: "
                 f"{c['user_slots']} user id slots, {c['item_slots']} item id slots (0 = padding)", "",
                 "| split | rows | users | items | positive rate | warm share |", "|---|---|---|---|---|---|"]
        for s in ("train", "valid", "valid_small", "test"):
            v = c[s]
            lines.append(f"| {s} | {v['rows']:,} | {v['users']:,} | {v['items']:,} | {v['positive_rate']:.3f} | "
                         f"{v['warm_share']:.3f} |")
        info = self.meta.get("split_info", {})
        if info:
            lines += ["", "split: " + json.dumps(info)]
        sk = {k: v for k, v in self.meta.get("skipped", {}).items() if v}
        if sk:
            lines.append("skipped: " + json.dumps(sk))
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the prepared format to folder `path` atomically (a temporary
        folder beside it, renamed into place)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            table = pa.Table.from_pandas(self.rows, preserve_index=False)
            his = pa.ListArray.from_arrays(pa.array(self.his_offsets.astype(np.int32) if self.his_offsets[-1] < 2**31
                                                    else self.his_offsets), pa.array(self.his_values))
            table = table.append_column("his", his)
            pq.write_table(table, tmp / "rows.parquet")
            pq.write_table(pa.table({"iid": np.arange(len(self.item_ids), dtype=np.int32),
                                     "item": self.item_ids.astype(str), "title": self.titles.astype(str)}),
                           tmp / "items.parquet")
            pq.write_table(pa.table({"uid": np.arange(len(self.user_ids), dtype=np.int32),
                                     "user": self.user_ids.astype(str)}), tmp / "users.parquet")
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=1, default=str))
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


def load_prepared(path: str | os.PathLike) -> Prepared:
    """Reads a folder written by :meth:`Prepared.save` and checks its consistency."""
    import pyarrow.parquet as pq

    path = Path(path)
    for f in ("rows.parquet", "items.parquet", "users.parquet", "meta.json"):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path} is not a prepared dataset: {f} is missing (run `binllm prepare`)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}; prepare again")
    table = pq.read_table(path / "rows.parquet")
    his = table["his"].combine_chunks()
    rows = table.drop(["his"]).to_pandas()
    offsets = his.offsets.to_numpy().astype(np.int64)
    values = his.values.to_numpy().astype(np.int32)
    items = pq.read_table(path / "items.parquet").to_pandas()
    users = pq.read_table(path / "users.parquet").to_pandas()
    prep = Prepared(rows, offsets, values, items["title"].to_numpy(object), users["user"].to_numpy(object),
                    items["item"].to_numpy(object), meta)
    if len(rows) and (rows["uid"].max() >= len(users) or rows["iid"].max() >= len(items) or rows["uid"].min() < 1
                      or rows["iid"].min() < 1):
        raise DataError(f"{path}: row ids fall outside the id maps")
    return prep


def read_reference_pickles(folder: str | os.PathLike, valid_small: float = 0.5, seed: int = 0) -> Prepared:
    """The prepared pickles distributed with the reference code (``train*.pkl``,
    ``valid*.pkl``, ``test*.pkl`` with columns ``uid, iid, label, timestamp, his,
    his_title, title, flag, not_cold``), keeping their ids.

    These are pickles: load only files you trust.
    """
    folder = Path(folder)
    files = {}
    for split in ("train", "valid", "test"):
        cands = sorted(p for p in folder.glob(f"{split}*.pkl") if "small" not in p.name)
        if not cands:
            raise FileNotFoundError(f"{folder}: no {split}*.pkl file")
        files[split] = cands[0]
    need = ["uid", "iid", "label", "timestamp", "his", "his_title", "title"]
    frames = []
    for split, f in files.items():
        df = pd.read_pickle(f)
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise DataError(f"{f}: missing column(s) {missing}; found {list(df.columns)}")
        df = df.copy()
        df["flag"] = SPLITS[split]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df = df.iloc[np.lexsort((df["timestamp"].to_numpy(), df["uid"].to_numpy()))].reset_index(drop=True)
    n_items = int(max(df["iid"].max(), max((max(h) if len(h) else 0) for h in df["his"]))) + 1
    n_users = int(df["uid"].max()) + 1
    titles = np.full(n_items, "", dtype=object)
    titles[df["iid"].to_numpy()] = df["title"].to_numpy()
    for h, ht in zip(df["his"], df["his_title"]):
        titles[np.asarray(h, dtype=np.int64)] = list(ht)
    titles[0] = ""
    his = [np.asarray([x for x in h if x != 0], np.int32) for h in df["his"]]
    lengths = np.array([len(h) for h in his], np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    values = np.concatenate(his) if len(his) else np.zeros(0, np.int32)
    flag = df["flag"].to_numpy().astype(np.int8)
    uid, iid = df["uid"].to_numpy().astype(np.int32), df["iid"].to_numpy().astype(np.int32)
    utc = np.bincount(uid[flag == -1], minlength=n_users).astype(np.int32)
    itc = np.bincount(iid[flag == -1], minlength=n_items).astype(np.int32)
    rng = np.random.default_rng(seed)
    vr = np.flatnonzero(flag == 0)
    small = np.zeros(len(flag), bool)
    small[rng.choice(vr, size=int(valid_small * len(vr)), replace=False)] = True
    rows = pd.DataFrame({"uid": uid, "iid": iid, "label": df["label"].to_numpy().astype(np.int8),
                         "timestamp": df["timestamp"].to_numpy().astype(np.int64), "flag": flag,
                         "his_count": lengths.astype(np.int32), "user_train_count": utc[uid],
                         "item_train_count": itc[iid], "not_cold": (utc[uid] > 0) & (itc[iid] > 0),
                         "valid_small": small})
    meta = {"format_version": FORMAT_VERSION, "source": "reference-pickles",
            "protocol": {"name": "reference", "valid_small": valid_small, "seed": seed},
            "files": {str(f): _file_hash(str(f)) for f in files.values()}, "skipped": {},
            "n_users": n_users - 1, "n_items": n_items - 1,
            "warm_definition": "warm = not_cold = user and item both occur in train; cold = the rest"}
    prep = Prepared(rows, offsets, values, titles, np.array([str(i) if i else "" for i in range(n_users)], object),
                    np.array([str(i) if i else "" for i in range(n_items)], object), meta)
    prep.meta["counts"] = prep.counts()
    return prep


def load_source(source: str, path: str | None = None, meta_path: str | None = None, **kw: Any) -> Ratings:
    """Reads a named source: 'ml-100k' (embedded default), 'ml-1m', 'amazon-book', or 'table'."""
    if source == "ml-100k":
        return read_ml100k(path)
    if path is None:
        raise ValueError(f"source {source!r} needs a path")
    if source == "ml-1m":
        return read_ml1m(path)
    if source == "amazon-book":
        if meta_path is None:
            raise ValueError("source 'amazon-book' needs meta_path (meta_Books.json.gz)")
        return read_amazon(path, meta_path, year=PROTOCOLS["amazon-book"].year, **kw)
    if source == "table":
        return read_table(path, **kw)
    raise ValueError(f"source must be 'ml-100k', 'ml-1m', 'amazon-book' or 'table'; got {source!r}")
