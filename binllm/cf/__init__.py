"""The collaborative layer: from interactions to codes. The hash model and MF
(:mod:`~binllm.cf.hashing`, torch), code books, the packed codes of every user and item
(:mod:`~binllm.cf.codebook`), top-N candidate search over codes or vectors with each user's
known items left out (:mod:`~binllm.cf.retrieval`), and the `implicit` ALS/BPR anchors
(:mod:`~binllm.cf.anchors`).

May import: the leaves, ``binllm.kernels`` and ``binllm.data``; never the LLM layer or above.
``import binllm.cf`` loads no torch: import :mod:`binllm.cf.hashing` for the models.
"""
from __future__ import annotations

from binllm.cf.codebook import CodeBook

__all__ = ["CodeBook"]
