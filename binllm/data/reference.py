"""The prepared pickles distributed with the reference code, read into a
:class:`~binllm.data.prepared.Prepared` keeping their ids.

Pickles can run code when loaded, so they are read only on request
(``trust_pickles=True``, the CLI's ``--trust-pickles``) and even then through
an unpickler that resolves only the numpy/pandas/pyarrow reconstructors a
DataFrame of numbers, strings and lists needs; anything else (``os.system``,
``builtins.eval``, ...) is refused before it is called.
"""
from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from binllm.data.prepared import FORMAT_VERSION, SPLITS, WARM_DEFINITION, Prepared, file_hash, finish_rows
from binllm.data.readers import DataError

# Modules whose globals may be resolved at all; the object found must then be in _allowed_objects().
_SAFE_MODULES = ("numpy", "pandas", "pyarrow", "builtins", "__builtin__", "_codecs")


def _allowed_objects() -> dict[int, object]:
    """The reconstructors of a DataFrame of ints/floats/bools/strings/lists, by id.

    Looked up through their current homes, so the older module paths that
    pickles from other numpy/pandas versions name resolve to the same objects."""
    import builtins
    import codecs
    import importlib
    import warnings

    objs: list[object] = [builtins.slice, builtins.bytearray, builtins.list, builtins.tuple, builtins.dict,
                          builtins.int, builtins.float, builtins.str, builtins.bool, builtins.complex,
                          codecs.encode, np.ndarray, np.dtype, pd.DataFrame, pd.Series, pd.Index, pd.RangeIndex,
                          pd.StringDtype]
    named = [("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
             ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
             ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
             ("pandas.core.internals.managers", "BlockManager"),
             ("pandas.core.internals.managers", "SingleBlockManager"),
             ("pandas._libs.internals", "_unpickle_block"), ("pandas.core.indexes.base", "_new_Index"),
             ("pandas.arrays", "ArrowStringArray"), ("pandas.arrays", "StringArray"),
             ("pyarrow.lib", "_restore_array"), ("pyarrow.lib", "py_buffer"), ("pyarrow.lib", "type_for_alias")]
    for mod, name in named:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core is numpy._core's old name
                objs.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass  # not in this numpy/pandas version
    # numpy scalar types (np.int64(...) inside lists pickle as numpy.dtype + scalar, but be lenient)
    objs += [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.float32,
             np.float64, np.bool_, np.str_]
    return {id(o): o for o in objs}


def _restricted_unpickler() -> type[pickle.Unpickler]:
    from pandas.compat import pickle_compat

    base: type[pickle.Unpickler] = getattr(pickle_compat, "Unpickler", pickle.Unpickler)
    locations: dict = getattr(pickle_compat, "_class_locations_map", {})
    allowed = _allowed_objects()

    class RestrictedUnpickler(base):  # type: ignore[valid-type, misc]
        def find_class(self, module: str, name: str) -> Callable:
            module, name = locations.get((module, name), (module, name))
            if module.split(".")[0] in _SAFE_MODULES:
                try:
                    obj = super().find_class(module, name)
                except (ImportError, AttributeError):
                    obj = None
                if obj is not None and id(obj) in allowed:
                    return obj
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a DataFrame pickle")

    return RestrictedUnpickler


def load_pickled_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a pickled DataFrame through the restricted unpickler (see the module docstring).

    Raises:
        DataError: the pickle names a global outside the allowed reconstructors,
            is malformed, or does not hold a DataFrame.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # old module paths in older pickles
            obj = _restricted_unpickler()(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: refused to load this pickle: {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{path}: not a readable DataFrame pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, pd.DataFrame):
        raise DataError(f"{path}: expected a pickled DataFrame; got {type(obj).__name__}")
    return obj


def read_reference_pickles(folder: str | os.PathLike, valid_small: float = 0.5, seed: int = 0, *,
                           trust_pickles: bool = False, domain: str | None = None) -> Prepared:
    """The prepared pickles distributed with the reference code (``train*.pkl``,
    ``valid*.pkl``, ``test*.pkl`` with columns ``uid, iid, label, timestamp, his,
    his_title, title, flag, not_cold``), keeping their ids.

    Args:
        folder: the folder of the three pickles (``*small*`` files are ignored).
        valid_small, seed: fraction of valid rows drawn into ``valid_small`` and its seed.
        trust_pickles: must be True: pickles from an untrusted source can run code;
            even then only DataFrame reconstructors are resolved.
        domain: the items' domain for prompt wording (``'movie'`` for ML-1M,
            ``'book'`` for Amazon-Book), recorded in the metadata; the pickles do not say.

    Raises:
        DataError: without `trust_pickles`, or for a refused/malformed pickle or missing columns.
    """
    folder = Path(folder)
    if not trust_pickles:
        raise DataError(f"{folder}: reading the reference pickles unpickles files, which can run code; "
                        "pass --trust-pickles (trust_pickles=True) if you trust where they come from")
    if not 0 < valid_small <= 1:
        raise ValueError(f"valid_small must be in (0, 1]; got {valid_small}")
    if domain is not None and (not isinstance(domain, str) or not domain.isidentifier()):
        raise ValueError(f"domain must be a word such as 'movie' or 'book'; got {domain!r}")
    files = {}
    for split in ("train", "valid", "test"):
        cands = sorted(p for p in folder.glob(f"{split}*.pkl") if "small" not in p.name)
        if not cands:
            raise FileNotFoundError(f"{folder}: no {split}*.pkl file")
        files[split] = cands[0]
    need = ["uid", "iid", "label", "timestamp", "his", "his_title", "title"]
    frames = []
    for split, f in files.items():
        df = load_pickled_frame(f)
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
    rows = finish_rows(df["uid"].to_numpy().astype(np.int32), df["iid"].to_numpy().astype(np.int32),
                        df["label"].to_numpy(), df["timestamp"].to_numpy(), df["flag"].to_numpy().astype(np.int8),
                        lengths, n_users, n_items, valid_small, seed)
    meta = {"format_version": FORMAT_VERSION, "source": "reference-pickles", "protocol_name": "reference",
            "protocol": {"name": "reference", "valid_small": valid_small, "seed": seed},
            "files": {str(f): file_hash(str(f)) for f in files.values()}, "skipped": {},
            "n_users": n_users - 1, "n_items": n_items - 1, "warm_definition": WARM_DEFINITION}
    if domain is not None:
        meta["domain"] = domain
    prep = Prepared(rows, offsets, values, titles, np.array([str(i) if i else "" for i in range(n_users)], object),
                    np.array([str(i) if i else "" for i in range(n_items)], object), meta)
    prep.meta["counts"] = prep.counts()
    return prep
