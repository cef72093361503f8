"""Prompts: templates with text and code fields, filled for CTR rows.

A template is one line with fields ``<ItemTitleList>`` (the user's latest
liked titles, each in double quotes, joined by ``", "``), ``<TargetItemTitle>``
(quoted), ``<UserID>`` and ``<TargetItemID>`` (code strings, bits or dotted).
The packaged templates (``binllm/templates/{movie,book}_{text,codes,text_codes}.txt``)
follow the reference wording; the literal ``\\n`` of the reference files
becomes a real newline. Code strings for all users and items are made once by
the C++ core (``CodeBook.strings``); filling a row is string concatenation.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from binllm.cf.codebook import CodeBook
    from binllm.data import Prepared

FIELDS = ("<ItemTitleList>", "<UserID>", "<TargetItemTitle>", "<TargetItemID>")
CODE_FIELDS = ("<UserID>", "<TargetItemID>")
KINDS = ("text", "codes", "text_codes")
DOMAINS = ("movie", "book")


def packaged_template(kind: str, domain: str = "movie") -> str:
    """The shipped template of `kind` ('text', 'codes', 'text_codes') for 'movie' or 'book'."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}; got {domain!r}")
    text = resources.files("binllm").joinpath("templates").joinpath(f"{domain}_{kind}.txt").read_text(encoding="utf-8")
    return text.strip().splitlines()[0]


def check_template(template: str) -> list[str]:
    """The fields a template uses; raises ValueError for unknown fields or no target."""
    found = re.findall(r"<[A-Za-z]+>", template)
    unknown = sorted(set(found) - set(FIELDS))
    if unknown:
        raise ValueError(f"template has unknown field(s) {unknown}; known fields are {list(FIELDS)}")
    if "<TargetItemTitle>" not in found and "<TargetItemID>" not in found:
        raise ValueError("template must contain <TargetItemTitle> or <TargetItemID> (the item to predict)")
    return found


@dataclass
class PromptConfig:
    """How prompts are written.

    Args:
        kind: packaged template kind: 'text' (titles only), 'codes' (codes only) or 'text_codes'.
        domain: 'movie' or 'book' wording.
        code_style: 'dotted' (8 bits a number) or 'bits' ('0'/'1' per dimension).
        max_titles: at most this many latest liked titles (the reference uses 10).
        empty_history: the word written when a user has no liked items yet.
        template: a custom template (overrides kind/domain); fields as in :data:`FIELDS`.
    """

    kind: str = "text_codes"
    domain: str = "movie"
    code_style: str = "dotted"
    max_titles: int = 10
    empty_history: str = "None"
    template: str | None = None

    def __post_init__(self) -> None:
        if self.code_style not in ("dotted", "bits"):
            raise ValueError(f"code_style must be 'dotted' or 'bits'; got {self.code_style!r}")
        if self.max_titles < 0:
            raise ValueError(f"max_titles must be >= 0; got {self.max_titles}")
        check_template(self.resolved())

    def resolved(self) -> str:
        t = self.template if self.template is not None else packaged_template(self.kind, self.domain)
        return t.replace("\\n", "\n")

    @property
    def uses_codes(self) -> bool:
        return any(f in self.resolved() for f in CODE_FIELDS)


class PromptBuilder:
    """Fills a template for (user, item, history) rows.

    Args:
        config: the prompt settings.
        titles: item title by iid (object array, titles[0] = '').
        codebook: a :class:`binllm.cf.codebook.CodeBook`; required when the template has code fields.
    """

    def __init__(self, config: PromptConfig, titles: np.ndarray, codebook: CodeBook | None = None):
        self.config = config
        template = config.resolved()
        self._parts = re.split(r"(<[A-Za-z]+>)", template)
        self.titles = np.asarray(titles, dtype=object)
        self.user_codes: list[str] | None = None
        self.item_codes: list[str] | None = None
        if config.uses_codes:
            if codebook is None:
                raise ValueError("this template has code fields (<UserID>/<TargetItemID>) but no codebook was given")
            self.user_codes = codebook.strings("user", config.code_style)
            self.item_codes = codebook.strings("item", config.code_style)
        self._quoted = np.array(['"' + str(t) + '"' for t in self.titles], dtype=object)

    def build(self, uids: Sequence[int] | np.ndarray, iids: Sequence[int] | np.ndarray,
              histories: Sequence[np.ndarray], n_titles: Sequence[int] | np.ndarray | int | None = None) -> list[str]:
        """Prompts for aligned rows; `n_titles` caps the history per row (default max_titles)."""
        uids, iids = np.asarray(uids), np.asarray(iids)
        if not (len(uids) == len(iids) == len(histories)):
            raise ValueError(f"uids, iids and histories must have one entry per row; got {len(uids)}, {len(iids)}, "
                             f"{len(histories)}")
        if len(iids) and (iids.max() >= len(self.titles) or iids.min() < 0):
            raise ValueError(f"iids must lie in 0..{len(self.titles) - 1}")
        caps = np.full(len(uids), self.config.max_titles) if n_titles is None else np.broadcast_to(n_titles, len(uids))
        out = []
        q, empty = self._quoted, self.config.empty_history
        for r in range(len(uids)):
            vals = {}
            for p in self._parts:
                if p == "<ItemTitleList>":
                    h = histories[r]
                    c = int(caps[r])
                    h = h[max(len(h) - c, 0):] if c > 0 else h[:0]  # a shorter history is kept whole
                    vals[p] = ", ".join(q[h]) if len(h) else empty
                elif p == "<TargetItemTitle>":
                    vals[p] = q[iids[r]]
                elif p == "<UserID>":
                    assert self.user_codes is not None  # code fields imply a codebook (checked in __init__)
                    vals[p] = self.user_codes[uids[r]]
                elif p == "<TargetItemID>":
                    assert self.item_codes is not None
                    vals[p] = self.item_codes[iids[r]]
            out.append("".join(vals.get(p, p) for p in self._parts))
        return out

    def for_rows(self, prep: Prepared, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Prompts and labels for row numbers of a prepared dataset."""
        r = prep.rows.iloc[rows]
        hist = prep.history(rows, self.config.max_titles if self.config.max_titles else None)
        return self.build(r["uid"].to_numpy(), r["iid"].to_numpy(), hist), r["label"].to_numpy()
