"""Float implicit-feedback anchors for list evaluation: ALS and BPR of the
`implicit` library (pinned in the ``bench`` extra), trained on a prepared
dataset's train positives, so that code retrieval is compared with models a
researcher of this field would otherwise pick. Used by list evaluation and the
benchmarks only; nothing in the core needs `implicit` (:func:`available`).

Defaults were chosen on valid rows (tools/lists_search.py, results/lists_search_broad.md).
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from binllm.data import Prepared

ALGORITHMS = ("als", "bpr")
#: Settings of each anchor picked by valid HR@10 (results/lists_search_broad.md); `factors` as binllm's 64-bit codes.
DEFAULTS: dict[str, dict[str, Any]] = {
    "als": dict(factors=64, regularization=0.5, iterations=15),
    "bpr": dict(factors=64, learning_rate=0.01, regularization=0.01, iterations=100),
}


def available() -> bool:
    """Whether the `implicit` package is installed."""
    return importlib.util.find_spec("implicit") is not None


def implicit_factors(prep: Prepared, algorithm: str, seed: int = 0, threads: int | None = None,
                     **settings: Any) -> tuple[np.ndarray, np.ndarray]:
    """(user factors float32 (user slots, f), item factors float32 (catalogue items = item slots - 1, f))
    of an `implicit` ALS or BPR model on the train positives (confidence 1 each); rank items by the
    dot product. `settings` override :data:`DEFAULTS`.

    Raises:
        ValueError: unknown `algorithm`; ImportError: `implicit` is not installed."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
    if not available():
        raise ImportError("the implicit anchors need the `implicit` package: pip install 'binllm[bench]' "
                          "(or implicit==0.7.3)")
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits  # a dependency of implicit

    from binllm import threads as _threads

    tr = prep.split("train")
    liked = tr[tr["label"].to_numpy() == 1]
    u = liked["uid"].to_numpy().astype(np.int64)
    i = liked["iid"].to_numpy().astype(np.int64) - 1
    m = prep.n_item_slots - 1
    ui = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(prep.n_user_slots, m))
    ui.sum_duplicates()
    ui.data[:] = 1.0
    kw = {**DEFAULTS[algorithm], **settings}
    n_threads = threads if threads is not None else _threads.available_cores()
    cls = AlternatingLeastSquares if algorithm == "als" else BayesianPersonalizedRanking
    # implicit runs its own threads and asks for a single-threaded BLAS inside them (else it warns)
    with threadpool_limits(1, "blas"):
        model = cls(random_state=seed, num_threads=n_threads, **kw)
        model.fit(ui, show_progress=False)
    uf, itf = np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)
    return uf, itf
