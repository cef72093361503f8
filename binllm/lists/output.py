"""Recommendation lists as files: JSON lines or TSV with raw user and item ids, rank, title,
retrieval and LLM score, written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from binllm import _io
from binllm.lists.candidates import RecLists

if TYPE_CHECKING:
    from binllm.data import Prepared

FORMATS = ("jsonl", "tsv")


def write_lists(lists: RecLists, prep: Prepared, out: str | os.PathLike, fmt: str = "jsonl") -> Path:
    """Writes `lists` of `prep`'s users with raw ids (user, rank, item, title, retrieval_score, llm_score)
    to `out` atomically; returns its path."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    uids, iids, titles = prep.user_ids, prep.item_ids, prep.titles
    integral = np.issubdtype(lists.retrieval.dtype, np.integer)

    def writer(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            if fmt == "tsv":
                f.write("user\trank\titem\ttitle\tretrieval_score\tllm_score\n")
            for r in range(len(lists.users)):
                user = str(uids[lists.users[r]])
                for c in range(lists.items.shape[1]):
                    it = int(lists.items[r, c])
                    if it <= 0:
                        break
                    rs = lists.retrieval[r, c]
                    rs_v: int | float = int(rs) if integral else float(rs)
                    ls = None if lists.llm is None else float(lists.llm[r, c])
                    if fmt == "jsonl":
                        f.write(json.dumps({"user": user, "rank": c + 1, "item": str(iids[it]),
                                            "title": str(titles[it]), "retrieval_score": rs_v,
                                            "llm_score": ls}, ensure_ascii=False) + "\n")
                    else:
                        t = " ".join(str(titles[it]).split())  # no tabs/newlines inside a field
                        f.write(f"{user}\t{c + 1}\t{iids[it]}\t{t}\t{rs_v}\t{'' if ls is None else repr(ls)}\n")

    return _io.atomic_save(out, writer)
