"""Readers: a source (ML-100K atomic files, ML-1M ``.dat`` files or zip,
Amazon 2018 JSON lines, a generic CSV/Parquet) in, :class:`Ratings` out — one
frame ``user, item, rating, timestamp`` plus item titles.

Readers check types and ranges and name the file and line of the first bad
value; they apply no protocol (that is :mod:`binllm.data.protocol`). Amazon
files are streamed and filtered batch by batch so 27M reviews never sit in
memory at once.
"""
from __future__ import annotations

import csv
import io
import os
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Timestamps outside [1970, 2100) are taken as a unit or parsing error, never silently split.
_TS_MIN, _TS_MAX = 0, 4_102_444_800
MISSING_TITLES = ("error", "empty")


class DataError(ValueError):
    """Bad input data: the message names the file, line or column."""


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
    rating = frame["rating"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(rating)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: rating is not finite on line {i + line_offset}: {rating[i]!r}")
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
        # fractions of a second (985397257.5, 1.5e9) are dropped: the protocols order and cut by whole seconds
        "timestamp": (np.floor(ts).astype(np.int64) if ts.dtype.kind == "f"
                      else frame["timestamp"].astype(np.int64).to_numpy()),
    })
    return out


def _read_text(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not valid {encoding} text on line {line} (byte {e.start})") from None


def _read_delimited(text: str, path: Path, sep: str, names: list[str], header: bool,
                    quoting: int = csv.QUOTE_NONE) -> pd.DataFrame:
    """A delimited text as a frame of strings. `quoting`: QUOTE_NONE for the MovieLens files, whose
    titles hold bare quote characters (``"Great Day in Harlem, A" (1994)``); QUOTE_MINIMAL, standard
    CSV (pandas, Excel, Python's csv module), for user tables."""
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, names=names, header=0 if header else None, dtype=str,
                           keep_default_na=False, na_values=[""], engine="c", quoting=quoting)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed line ({' '.join(str(e).split())})") from None


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
        if batch.num_rows:
            skipped["reviews_missing_fields"] += batch.num_rows - pc.sum(pc.cast(ok, pa.int64())).as_py()
        b = batch.filter(ok)
        if year is not None:
            t = b["unixReviewTime"]
            keep = pc.and_(pc.greater_equal(t, lo), pc.less(t, hi))
            if b.num_rows:
                skipped["reviews_other_years"] += b.num_rows - pc.sum(pc.cast(keep, pa.int64())).as_py()
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
               titles_item: str | None = None, sep: str = ",", encoding: str = "utf-8",
               missing_titles: str = "error") -> Ratings:
    """A generic CSV (or ``.parquet``) of ratings, with the column names given.

    Titles come from column `title` of the same file, or of `titles_path`
    (keyed by `titles_item`, default `item`). Timestamps may be seconds or
    date strings (parsed as UTC).

    With ``missing_titles='empty'`` items without a title (all of them when
    there is no title column) get an empty title, counted in
    ``skipped['items_without_title']``; with ``'error'`` (default)
    :func:`~binllm.data.protocol.prepare` refuses them.
    """
    check_missing_titles(missing_titles)
    path = Path(path)
    _require_file(path, "ratings file")

    def load(p: Path) -> pd.DataFrame:
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        return _read_delimited(_read_text(p, encoding), p, sep, None, header=True,  # type: ignore[arg-type]
                               quoting=csv.QUOTE_MINIMAL)

    df = load(path)
    need = [user, item, rating, timestamp] + ([title] if title and titles_path is None else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    ts = df[timestamp]
    if not pd.api.types.is_numeric_dtype(ts) and len(ts) and not _is_number(ts.iloc[0]):
        with warnings.catch_warnings():  # pandas' "could not infer format" advice: the error below says more
            warnings.simplefilter("ignore")
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
    out = Ratings(frame, titles, path.stem, [str(path)] + ([str(titles_path)] if titles_path else []))
    return fill_missing_titles(out) if missing_titles == "empty" else out


def _is_number(value: object) -> bool:
    """Whether a cell reads as a number (``985397257``, ``985397257.5``, ``1.5e9``): seconds, not a date."""
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def check_missing_titles(mode: str) -> None:
    if mode not in MISSING_TITLES:
        raise ValueError(f"missing_titles must be 'error' or 'empty'; got {mode!r}")


def fill_missing_titles(ratings: Ratings) -> Ratings:
    """Gives every rated item without a title an empty one, counted in
    ``skipped['items_without_title']`` (the prompts then show an empty title)."""
    items = pd.unique(ratings.frame["item"])
    have = pd.Index(ratings.titles.index)
    missing = items[~pd.Index(items).isin(have)]
    if len(missing) == 0:
        return ratings
    titles = pd.concat([ratings.titles.astype(object), pd.Series([""] * len(missing), index=missing, dtype=object)])
    skipped = {**ratings.skipped, "items_without_title": len(missing)}
    return Ratings(ratings.frame, titles, ratings.source, list(ratings.files), skipped)


COLUMN_ROLES = ("user", "item", "rating", "timestamp", "title")


def parse_columns(spec: str) -> dict[str, str]:
    """The ``--columns`` value ``user,item,rating,timestamp[,title]`` as keyword
    arguments of :func:`read_table`: ``{'user': ..., 'item': ..., ...}``.

    Raises:
        DataError: not 4 or 5 names, an empty name, or a name given twice.
    """
    if not isinstance(spec, str):
        raise TypeError(f"columns must be a string 'user,item,rating,timestamp[,title]'; got {type(spec).__name__}")
    names = [c.strip() for c in spec.split(",")]
    if len(names) not in (4, 5):
        raise DataError(f"--columns needs 4 or 5 comma-separated column names (user,item,rating,timestamp[,title]); "
                        f"got {len(names)}: {spec!r}")
    if any(not c for c in names):
        raise DataError(f"--columns has an empty column name: {spec!r}")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"--columns names column(s) {dup} more than once: {spec!r}")
    return dict(zip(COLUMN_ROLES, names))
