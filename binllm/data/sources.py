"""Named sources: 'ml-100k' (embedded), 'ml-1m', 'amazon-book' and 'table', each read by its reader
(:mod:`binllm.data.readers`) with the settings its protocol (:mod:`binllm.data.protocol`) fixes, such
as Amazon's review year. Above both: the readers know no protocol, the protocols no file format.
"""
from __future__ import annotations

import os
from typing import Any

from binllm.data.protocol import PROTOCOLS
from binllm.data.readers import (
    Ratings,
    check_missing_titles,
    fill_missing_titles,
    read_amazon,
    read_ml1m,
    read_ml100k,
    read_table,
)


def load_source(source: str, path: str | os.PathLike | None = None, meta_path: str | os.PathLike | None = None,
                missing_titles: str = "error", **kw: Any) -> Ratings:
    """Reads a named source: 'ml-100k' (embedded default), 'ml-1m', 'amazon-book', or 'table'.

    Args:
        source: the source name.
        path: the source's file or folder (optional for 'ml-100k').
        meta_path: Amazon metadata file ('amazon-book' only).
        missing_titles: ``'error'`` (prepare refuses untitled items) or
            ``'empty'`` (they get an empty title; see :func:`fill_missing_titles`).
        kw: passed on to :func:`read_amazon` or :func:`read_table`.
    """
    check_missing_titles(missing_titles)
    ratings = _load_source(source, path, meta_path, **kw)
    return fill_missing_titles(ratings) if missing_titles == "empty" else ratings


def _load_source(source: str, path: str | os.PathLike | None, meta_path: str | os.PathLike | None,
                 **kw: Any) -> Ratings:
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
