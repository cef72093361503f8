"""The prepared format: :class:`Prepared` (CTR rows of all splits, histories,
id maps, metadata), its atomic :meth:`Prepared.save` and :func:`load_prepared`.

On disk a prepared dataset is one folder: ``rows.parquet`` (one row per
interaction, with its history as a list column), ``items.parquet``,
``users.parquet`` and ``meta.json``. Every later stage reads only this.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from binllm import _io
from binllm.data.readers import DataError

FORMAT_VERSION = 1
SPLITS = {"train": -1, "valid": 0, "test": 1}
PREPARED_FILES = ("rows.parquet", "items.parquet", "users.parquet", "meta.json")
# The data files whose sha256 meta.json records ("checksums") and load_prepared compares.
DATA_FILES = PREPARED_FILES[:3]
ROW_COLUMNS = ("uid", "iid", "label", "timestamp", "flag", "his_count", "user_train_count", "item_train_count",
               "not_cold", "valid_small")
WARM_DEFINITION = "warm = not_cold = user and item both occur in train; cold = the rest"
# Folders of the prepared kind carry this tag in their binllm output marker (see binllm._io).
OUTPUT_KIND = "prepared"


def file_hash(name: str) -> str | None:
    path = Path(name.split(":", 1)[0]) if not Path(name).exists() else Path(name)
    if not path.is_file():
        return None
    return _io.sha256_file(path)


def dataset_fingerprint(checksums: dict[str, str]) -> str:
    """sha256 over the per-file checksums of a prepared folder: equal iff its data files are equal."""
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()


def read_fingerprint(path: str | os.PathLike) -> str | None:
    """The :attr:`Prepared.fingerprint` of a prepared folder from its meta.json alone (no data is
    read; :func:`load_prepared` checks the files against it); None for a folder without checksums."""
    try:
        sums = json.loads((Path(path) / "meta.json").read_text(encoding="utf-8")).get("checksums")
    except (OSError, ValueError, AttributeError):
        return None
    return dataset_fingerprint(sums) if isinstance(sums, dict) and sums else None


def _draw_valid_small(flag: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A fixed random `fraction` of the valid rows: the same seed and rows give
    the same draw on every run and platform (numpy's PCG64 stream)."""
    rng = np.random.default_rng(seed)
    valid_rows = np.flatnonzero(flag == 0)
    small = np.zeros(len(flag), bool)
    small[rng.choice(valid_rows, size=int(np.floor(fraction * len(valid_rows))), replace=False)] = True
    return small


def finish_rows(uid: np.ndarray, iid: np.ndarray, label: np.ndarray, timestamp: np.ndarray, flag: np.ndarray,
                 his_count: np.ndarray, n_user_slots: int, n_item_slots: int, valid_small: float,
                 seed: int) -> pd.DataFrame:
    """The rows table shared by every way of making a :class:`Prepared`: train
    counts per user and item, the warm flag and the ``valid_small`` draw.

    Args:
        uid, iid: int32 (n,) ids (0 = padding, never used by a row); label: int8 (n,);
        timestamp: int64 (n,); flag: int8 (n,) -1/0/1; his_count: (n,) earlier likes per row.
        n_user_slots, n_item_slots: max id + 1.
        valid_small, seed: fraction of valid rows drawn into ``valid_small`` and its seed.
    """
    train = flag == -1
    utc = np.bincount(uid[train], minlength=n_user_slots).astype(np.int32)
    itc = np.bincount(iid[train], minlength=n_item_slots).astype(np.int32)
    return pd.DataFrame({
        "uid": uid.astype(np.int32), "iid": iid.astype(np.int32), "label": label.astype(np.int8),
        "timestamp": timestamp.astype(np.int64), "flag": flag.astype(np.int8),
        "his_count": his_count.astype(np.int32), "user_train_count": utc[uid], "item_train_count": itc[iid],
        "not_cold": (utc[uid] > 0) & (itc[iid] > 0),
        "valid_small": _draw_valid_small(flag, valid_small, seed),
    })


def _is_prepared_folder(path: Path) -> bool:
    """A folder written by an earlier Prepared.save (before output markers existed)."""
    return (path / "meta.json").is_file() and (path / "rows.parquet").is_file()


def _clean_legacy_temps(path: Path) -> None:
    """Removes what older versions' interrupted saves left next to `path`:
    ``.<name>.XXXXXXXX`` (mkdtemp) folders holding only prepared files, and a
    ``.<name>.old`` prepared folder when `path` itself exists. Only folders
    older than this process are touched, so a concurrent save is left alone."""
    import re

    from binllm._io import process_start

    started = process_start(os.getpid())
    pat = re.compile(r"^\." + re.escape(path.name) + r"\.([a-z0-9_]{8}|old)$")
    for e in path.parent.iterdir() if path.parent.is_dir() else ():
        m = pat.match(e.name)
        if not m or e.is_symlink() or not e.is_dir():
            continue
        if started is not None and e.stat().st_mtime >= started:
            continue
        names = {c.name for c in e.iterdir()}
        if m.group(1) == "old":
            if not (path.exists() and _is_prepared_folder(e)):
                continue
        elif not names <= set(PREPARED_FILES):
            continue
        shutil.rmtree(e, ignore_errors=True)


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
                "rows": len(r),
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

    @property
    def domain(self) -> str:
        """What the items are, for prompt wording: ``'movie'``, ``'book'``, ...

        Read from the metadata; folders prepared before it was recorded get
        ``'movie'`` when their protocol is a MovieLens one (``ml-...``).

        Raises:
            DataError: the metadata does not say, and the protocol does not tell.
        """
        dom = self.meta.get("domain")
        if isinstance(dom, str) and dom:
            return dom
        name = self.protocol_name
        if name.startswith("ml-"):
            return "movie"
        raise DataError(f"this prepared dataset (protocol {name!r}, source {self.meta.get('source')!r}) does not "
                        "record its item domain; pass it explicitly (--domain movie or --domain book)")

    @property
    def fingerprint(self) -> str | None:
        """sha256 identifying the saved data files (from meta.json's checksums); None before
        :meth:`save` and for folders written before checksums were recorded."""
        sums = self.meta.get("checksums")
        return dataset_fingerprint(sums) if isinstance(sums, dict) and sums else None

    def validate(self, where: str = "prepared dataset") -> None:
        """Checks value domains and id bounds, so a damaged or hand-edited dataset fails here,
        not as a wrong title in a prompt or an IndexError deep in a stage.

        Raises:
            DataError: naming `where`, the column and the first bad value."""
        r = self.rows
        missing = [c for c in ROW_COLUMNS if c not in r.columns]
        if missing:
            raise DataError(f"{where}: rows lack column(s) {missing}; prepare again")

        def first_bad(col: str, ok: np.ndarray, want: str) -> None:
            if not ok.all():
                i = int(np.argmax(~ok))
                v = r[col].iloc[i]
                v = v.item() if hasattr(v, "item") else v  # 7, not np.int8(7)
                raise DataError(f"{where}: {col} of row {i} is {v!r}; expected {want} "
                                f"({int((~ok).sum())} such row(s)); prepare again")

        first_bad("label", r["label"].isin((0, 1)).to_numpy(), "0 or 1")
        first_bad("flag", r["flag"].isin((-1, 0, 1)).to_numpy(), "-1 (train), 0 (valid) or 1 (test)")
        first_bad("uid", r["uid"].between(1, self.n_user_slots - 1).to_numpy(),
                  f"a user id in 1..{self.n_user_slots - 1}")
        first_bad("iid", r["iid"].between(1, self.n_item_slots - 1).to_numpy(),
                  f"an item id in 1..{self.n_item_slots - 1}")
        first_bad("valid_small", ~r["valid_small"].to_numpy(bool) | (r["flag"].to_numpy() == 0),
                  "False outside the valid split")
        off, his = self.his_offsets, self.his_values
        if (len(off) != len(r) + 1 or (len(off) and (off[0] != 0 or off[-1] != len(his)))
                or (np.diff(off) < 0).any()):
            raise DataError(f"{where}: the history offsets do not match the rows; prepare again")
        bad = (his < 1) | (his >= self.n_item_slots)
        if bad.any():
            j = int(np.argmax(bad))
            row = int(np.searchsorted(off, j, side="right")) - 1
            raise DataError(f"{where}: history item id {int(his[j])} of row {row} is not an item id in "
                            f"1..{self.n_item_slots - 1} ({int(bad.sum())} such id(s)); prepare again")

    @property
    def protocol_name(self) -> str:
        """The protocol that made this dataset (``''`` where unknown)."""
        name = self.meta.get("protocol_name")
        if not name:
            proto = self.meta.get("protocol")
            name = proto.get("name") if isinstance(proto, dict) else None
        return str(name or "")

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the prepared format to folder `path` atomically (a temporary
        folder beside it, swapped into place; see :mod:`binllm._io`).

        Temporaries of earlier interrupted saves of `path` are removed first.

        Raises:
            ValueError: `path` exists and is not a prepared dataset folder
                (a file, or a folder of other things), which is never replaced.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        with _io.atomic_dir(path, OUTPUT_KIND, _is_prepared_folder) as tmp:  # refuses a foreign path first
            _clean_legacy_temps(path)
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
            self.meta["checksums"] = {f: file_hash(str(tmp / f)) for f in DATA_FILES}
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=1, default=str))
        return path


def load_prepared(path: str | os.PathLike) -> Prepared:
    """Reads a folder written by :meth:`Prepared.save` and checks it: each data file against the
    sha256 that meta.json records (folders from before checksums were recorded skip this), then
    the value domains and id bounds (:meth:`Prepared.validate`).

    Raises:
        FileNotFoundError: a file of the format is missing.
        DataError: an unreadable or damaged file, a checksum mismatch, or a bad value (named)."""
    import pyarrow.parquet as pq

    path = Path(path)
    for f in PREPARED_FILES:
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path} is not a prepared dataset: {f} is missing (run `binllm prepare`)")
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path / 'meta.json'}: not valid JSON ({e}); prepare again") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path / 'meta.json'}: expected a JSON object; prepare again")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}; prepare again")
    sums = meta.get("checksums")
    if sums is not None:
        if not isinstance(sums, dict) or set(sums) != set(DATA_FILES):
            raise DataError(f"{path / 'meta.json'}: malformed checksums; prepare again")
        for f in DATA_FILES:
            if file_hash(str(path / f)) != sums[f]:
                raise DataError(f"{path / f} does not match the sha256 in meta.json (changed after it was "
                                "prepared); prepare again")
    import pyarrow as pa

    try:
        table = pq.read_table(path / "rows.parquet")
        his = table["his"].combine_chunks()
        rows = table.drop(["his"]).to_pandas()
        offsets = his.offsets.to_numpy().astype(np.int64)
        values = his.values.to_numpy().astype(np.int32)
        items = pq.read_table(path / "items.parquet").to_pandas()
        users = pq.read_table(path / "users.parquet").to_pandas()
        title, item, user = items["title"], items["item"], users["user"]
    except (pa.ArrowException, OSError, KeyError) as e:
        raise DataError(f"{path}: unreadable prepared dataset ({type(e).__name__}: {e}); prepare again") from None
    prep = Prepared(rows, offsets, values, title.to_numpy(object), user.to_numpy(object), item.to_numpy(object), meta)
    prep.validate(str(path))
    return prep

