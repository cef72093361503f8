"""Recommendation logs in, time-split CTR rows with histories out.

* :mod:`~binllm.data.readers` turn a source (ML-100K atomic files, ML-1M
  ``.dat`` files or zip, Amazon 2018 JSON lines, a generic CSV/Parquet) into
  :class:`Ratings`;
* :mod:`~binllm.data.protocol` applies a :class:`Protocol` (:func:`prepare`):
  label rule, time split, (user, timestamp) order, id remap by first
  appearance (0 = padding), histories of earlier liked items across all
  splits, ``valid_small`` and warm/cold flags;
* :mod:`~binllm.data.prepared` holds the result (:class:`Prepared`), the one
  on-disk format every later stage reads, written atomically
  (:meth:`Prepared.save`) and read back with checks (:func:`load_prepared`);
* :mod:`~binllm.data.reference` reads the reference code's prepared pickles;
* :mod:`~binllm.data.sources` reads a named source (:func:`load_source`) with
  its protocol's settings.

Imports run one way: readers <- prepared <- protocol <- sources, reference;
no module here imports a later one or another's private names.

Everything is vectorised (numpy/pandas/pyarrow).
"""
from __future__ import annotations

from binllm.data.prepared import FORMAT_VERSION, SPLITS, Prepared, load_prepared
from binllm.data.protocol import PROTOCOLS, Protocol, default_protocol, prepare, user_time_split
from binllm.data.readers import (
    DataError,
    Ratings,
    fill_missing_titles,
    ml100k_dir,
    parse_columns,
    read_amazon,
    read_ml1m,
    read_ml100k,
    read_table,
)
from binllm.data.reference import read_reference_pickles
from binllm.data.sources import load_source

__all__ = [
    "FORMAT_VERSION", "PROTOCOLS", "SPLITS", "DataError", "Prepared", "Protocol", "Ratings", "default_protocol",
    "fill_missing_titles", "load_prepared", "load_source", "ml100k_dir", "parse_columns", "prepare", "read_amazon",
    "read_ml1m", "read_ml100k", "read_reference_pickles", "read_table", "user_time_split",
]
