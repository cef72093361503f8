"""Code books: the packed binary codes of every user and item of a dataset,
with d, the id maps, the training config and its metrics.

Saved as one safetensors file (no pickle), written atomically: tensors
``user_codes`` and ``item_codes`` (uint8, (slots, ceil(d/8)), row 0 = padding
id) and a JSON header holding d, the id maps, a fingerprint of the id maps and
a sha256 of the code arrays. Loading validates dtype, shapes against d, zero
tail bits, the id maps and the code checksum (a flipped code byte is caught);
every malformed file is a ValueError naming it. :meth:`CodeBook.check_dataset`
refuses a dataset with other ids.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from binllm import _io
from binllm._types import TextStyle
from binllm.kernels import codes as _codes
from binllm.kernels import textcodes

if TYPE_CHECKING:
    from binllm.cf.hashing import HashModel
    from binllm.data import Prepared

FORMAT = "binllm-codebook-1"


def codes_checksum(user_codes: np.ndarray, item_codes: np.ndarray, d: int) -> str:
    """sha256 over d, the shapes and the bytes of both code arrays (uint8, C order)."""
    h = hashlib.sha256(f"d={d};".encode())
    for name, a in (("user_codes", user_codes), ("item_codes", item_codes)):
        a = np.ascontiguousarray(a)
        h.update(f"{name}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def dataset_fingerprint(user_ids: np.ndarray, item_ids: np.ndarray) -> str:
    """sha256 over the raw id maps: equal iff ids mean the same users and items."""
    h = hashlib.sha256()
    for ids in (user_ids, item_ids):
        h.update("\x1f".join(map(str, ids)).encode())
        h.update(b"\x1e")
    return h.hexdigest()


@dataclass
class CodeBook:
    """Packed codes of all users and items.

    Attributes:
        user_codes: uint8 (user slots, ceil(d/8)); item_codes likewise.
        d: bits per code.
        user_ids, item_ids: raw ids by slot (slot 0 = padding, '').
        config: the training settings; metrics: its evaluation results.
    """

    user_codes: np.ndarray
    item_codes: np.ndarray
    d: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.d, bool) or not isinstance(self.d, (int, np.integer)) or self.d < 1:
            raise ValueError(f"d must be an integer >= 1; got {self.d!r}")
        nb = (self.d + 7) // 8
        for name in ("user_codes", "item_codes"):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2:
                raise ValueError(f"{name} must be a 2-D uint8 array; got {getattr(a, 'dtype', type(a))}")
            if a.shape[1] != nb:
                raise ValueError(f"{name} has {a.shape[1]} bytes per code but d={self.d} needs {nb}")
            if self.d % 8 and (a[:, -1] & ((1 << (8 - self.d % 8)) - 1)).any():
                raise ValueError(f"{name} has bits set past dimension d={self.d}")
        if len(self.user_ids) != len(self.user_codes) or len(self.item_ids) != len(self.item_codes):
            raise ValueError("user_ids/item_ids must have one entry per code row")

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.user_ids, self.item_ids)

    @classmethod
    def from_model(cls, model: HashModel, prep: Prepared, config: dict, metrics: dict) -> CodeBook:
        return cls(model.packed_codes("user"), model.packed_codes("item"), model.d, prep.user_ids, prep.item_ids,
                   config, metrics)

    def check_dataset(self, prep: Prepared) -> None:
        """Raises ValueError unless this code book was made for `prep`'s ids."""
        if len(prep.user_ids) != len(self.user_ids) or len(prep.item_ids) != len(self.item_ids):
            raise ValueError(
                f"code book does not match the dataset: it has {len(self.user_ids)} user / {len(self.item_ids)} "
                f"item slots, the dataset {len(prep.user_ids)} / {len(prep.item_ids)}")
        if dataset_fingerprint(prep.user_ids, prep.item_ids) != self.fingerprint:
            raise ValueError("code book does not match the dataset: the same sizes but other raw ids")

    def scores(self, uids: np.ndarray, iids: np.ndarray) -> np.ndarray:
        """+-1 inner products of (user, item) rows: int32 (n,)."""
        uids, iids = np.asarray(uids), np.asarray(iids)
        for name, ids, n in (("uids", uids, len(self.user_codes)), ("iids", iids, len(self.item_codes))):
            if len(ids) and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"{name} must lie in 0..{n - 1}; found {ids.min()}..{ids.max()}")
        return _codes.dot_rows(self.user_codes[uids], self.item_codes[iids], self.d)

    def strings(self, side: str, style: str = "dotted") -> list[str]:
        """Code strings of every slot of `side` ('user' or 'item')."""
        if side not in ("user", "item"):
            raise ValueError(f"side must be 'user' or 'item'; got {side!r}")
        codes = self.user_codes if side == "user" else self.item_codes
        return textcodes.format_codes(codes, self.d, cast(TextStyle, style))

    @property
    def checksum(self) -> str:
        """sha256 of the code arrays (see :func:`codes_checksum`)."""
        return codes_checksum(self.user_codes, self.item_codes, self.d)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the code book to `path` atomically (safetensors, no pickle).

        Raises:
            ValueError: `path` is an existing folder or not a regular file.
        """
        from safetensors.numpy import save

        path = Path(path)
        _io.check_output_path(path, "file")
        meta = {"format": FORMAT, "d": str(self.d), "fingerprint": self.fingerprint,
                "codes_sha256": self.checksum,
                "user_ids": json.dumps(list(map(str, self.user_ids))),
                "item_ids": json.dumps(list(map(str, self.item_ids))),
                "config": json.dumps(self.config, default=str), "metrics": json.dumps(self.metrics, default=str)}
        tensors = {"user_codes": np.ascontiguousarray(self.user_codes),
                   "item_codes": np.ascontiguousarray(self.item_codes)}
        # serialised in memory and written by _io, so the file mode follows the umask
        return _io.atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CodeBook:
        """Reads and checks a code book written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at `path`.
            ValueError: naming the file: not a safetensors code book, missing or
                malformed metadata, invalid codes, or codes/ids that do not
                match their checksums. A code book written before checksums
                existed loads with a warning.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"code book not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a safetensors code book ({e})") from None
        if meta.get("format") != FORMAT or set(tensors) != {"user_codes", "item_codes"}:
            raise ValueError(f"{path} is not a binllm code book (format {meta.get('format')!r}, "
                             f"tensors {sorted(tensors)})")
        missing = [k for k in ("d", "fingerprint", "user_ids", "item_ids", "config", "metrics") if k not in meta]
        if missing:
            raise ValueError(f"{path}: code book metadata lacks {missing} (corrupt file)")
        try:
            d = int(meta["d"])
            user_ids, item_ids = json.loads(meta["user_ids"]), json.loads(meta["item_ids"])
            config, metrics = json.loads(meta["config"]), json.loads(meta["metrics"])
        except ValueError as e:
            raise ValueError(f"{path}: malformed code book metadata ({e})") from None
        if not (isinstance(user_ids, list) and isinstance(item_ids, list) and isinstance(config, dict)
                and isinstance(metrics, dict)):
            raise ValueError(f"{path}: malformed code book metadata (id maps must be lists, config/metrics objects)")
        try:
            cb = cls(tensors["user_codes"], tensors["item_codes"], d, np.array(user_ids, object),
                     np.array(item_ids, object), config, metrics)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if "codes_sha256" in meta:
            if cb.checksum != meta["codes_sha256"]:
                raise ValueError(f"{path}: the code arrays do not match their sha256 checksum (corrupt file)")
        else:
            warnings.warn(f"{path}: code book written without a code checksum (older binllm); corruption of the "
                          "codes cannot be detected. Save it again to add one.", stacklevel=2)
        if cb.fingerprint != meta["fingerprint"]:
            raise ValueError(f"{path}: id maps do not match their fingerprint (corrupt file)")
        return cb
