"""Long-running property fuzz of binllm's text parsers (from_bits, from_dotted) with hypothesis.

The oracles are the pure-Python ones of tests/test_fuzz.py, so the default test suite and this
harness agree on what is valid. Hypothesis generates texts near valid codes (valid codes,
edited codes, and arbitrary text with non-ASCII characters and lone surrogates, as str or bytes)
and shrinks any disagreement to a minimal example.

    PYTHONPATH=$PWD python tools/fuzz_parsers.py --examples 200000      # about a minute per 50k examples
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_fuzz import oracle_bits, oracle_dotted  # noqa: E402

import binllm  # noqa: E402

DIMS = [1, 7, 8, 9, 16, 31, 32, 33, 63, 64, 65, 100]
CHARS = st.sampled_from(list("0123456789.") + [" ", "+", "-", "\x00", "é", "١", "０", "\ud800", "\udfff"])


@st.composite
def case(draw: st.DrawFn) -> tuple[str, int, list[str | bytes]]:
    style = draw(st.sampled_from(["bits", "dotted"]))
    d = draw(st.sampled_from(DIMS))
    texts: list[str | bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        bits = np.array(draw(st.lists(st.integers(0, 1), min_size=d, max_size=d)), np.uint8)
        code = np.packbits(bits)[None]
        t = (binllm.to_bits if style == "bits" else binllm.to_dotted)(code, d)[0]
        kind = draw(st.sampled_from(["valid", "edit", "junk"]))
        if kind == "edit":
            for _ in range(draw(st.integers(1, 3))):
                pos = draw(st.integers(0, len(t)))
                t = t[:pos] + draw(CHARS) + t[pos + draw(st.integers(0, 1)):]
        elif kind == "junk":
            t = draw(st.text(CHARS, max_size=20))
        if draw(st.booleans()):
            try:
                t = t.encode("utf-8")
            except UnicodeEncodeError:
                pass
        texts.append(t)
    return style, d, texts


def check(style: str, d: int, texts: list[str | bytes]) -> None:
    parse = binllm.from_bits if style == "bits" else binllm.from_dotted
    oracle = oracle_bits if style == "bits" else oracle_dotted
    want = [oracle(t, d) for t in texts]
    bad = next((i for i, w in enumerate(want) if w is None), None)
    try:
        got = parse(texts, d)
    except ValueError as e:
        assert bad is not None, f"rejected valid texts {texts!r} (d={d}): {e}"
        assert str(e).startswith(f"texts[{bad}]"), f"named the wrong row for {texts!r}: {e}"
        return
    assert bad is None, f"accepted invalid texts[{bad}] = {texts[bad]!r} (d={d})"
    assert got.tobytes() == b"".join(want), f"wrong bytes for {texts!r} (d={d})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=20_000, help="hypothesis examples to run")
    args = ap.parse_args(argv)

    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case())
    def run(c: tuple[str, int, list[str | bytes]]) -> None:
        check(*c)

    run()
    print(f"fuzz_parsers: {args.examples} examples, no disagreement with the oracles")


if __name__ == "__main__":
    main()
