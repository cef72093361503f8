"""Code books: the packed binary codes of every user and item of a dataset,
with d, the id maps, the training config and its metrics.

Saved as one safetensors file (no pickle): tensors ``user_codes`` and
``item_codes`` (uint8, (slots, ceil(d/8)), row 0 = padding id) and a JSON
header. Loading validates dtype, shapes against d, zero tail bits and the id
maps; :meth:`CodeBook.check_dataset` refuses a dataset with other ids.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import codes as _codes
from . import textcodes


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
    def from_model(cls, model: Any, prep: Any, config: dict, metrics: dict) -> "CodeBook":
        return cls(model.packed_codes("user"), model.packed_codes("item"), model.d, prep.user_ids, prep.item_ids,
                   config, metrics)

    def check_dataset(self, prep: Any) -> None:
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
        return textcodes.format_codes(self.user_codes if side == "user" else self.item_codes, self.d, style)

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "binllm-codebook-1", "d": str(self.d), "fingerprint": self.fingerprint,
                "user_ids": json.dumps(list(map(str, self.user_ids))),
                "item_ids": json.dumps(list(map(str, self.item_ids))),
                "config": json.dumps(self.config, default=str), "metrics": json.dumps(self.metrics, default=str)}
        tmp = path.with_name(path.name + ".tmp")
        save_file({"user_codes": np.ascontiguousarray(self.user_codes),
                   "item_codes": np.ascontiguousarray(self.item_codes)}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CodeBook":
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
        if meta.get("format") != "binllm-codebook-1" or set(tensors) != {"user_codes", "item_codes"}:
            raise ValueError(f"{path} is not a binllm code book")
        cb = cls(tensors["user_codes"], tensors["item_codes"], int(meta["d"]),
                 np.array(json.loads(meta["user_ids"]), object), np.array(json.loads(meta["item_ids"]), object),
                 json.loads(meta["config"]), json.loads(meta["metrics"]))
        if cb.fingerprint != meta["fingerprint"]:
            raise ValueError(f"{path}: id maps do not match their fingerprint (corrupt file)")
        return cb
