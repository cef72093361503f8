"""Seeded fuzz of the text parsers and sign packing against pure-Python oracles.

The default run checks 60,000 parser inputs (valid codes, mutated codes and random junk, as str
and bytes, with non-ASCII characters and lone surrogates) and 600 float matrices; the `slow` run
checks 1.2 million parser inputs. Inputs are parsed in batches (see check_batch). For longer
runs see tools/fuzz_parsers.py.
"""
import random
import re

import numpy as np
import pytest

import binllm

ALPHABET = "0123456789.01.\x00 +-x" + "é١０\u00a0"  # ASCII plus non-ASCII digits and spaces
SURROGATE = "\ud800"
DIMS = [1, 7, 8, 9, 16, 31, 32, 33, 63, 64, 65, 100]


def oracle_bits(text: str | bytes, d: int) -> bytes | None:
    """The packed code of a bit string, or None if binllm must reject it."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(text) != d or any(c not in "01" for c in text):
        return None
    return np.packbits(np.array([c == "1" for c in text], dtype=bool)).tobytes()


_NUM = r"(?:0|[1-9][0-9]{0,2})"


def oracle_dotted(text: str | bytes, d: int) -> bytes | None:
    """The packed code of a dotted-decimal string, or None if binllm must reject it."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    nb = (d + 7) // 8
    if not text.isascii() or not re.fullmatch(rf"{_NUM}(?:\.{_NUM}){{{nb - 1}}}", text):
        return None
    vals = [int(v) for v in text.split(".")]
    if any(v > 255 for v in vals):
        return None
    tail = (0xFF >> (d % 8)) if d % 8 else 0
    if vals[-1] & tail:
        return None
    return bytes(vals)


def mutate(rng: random.Random, s: str) -> str:
    for _ in range(rng.randint(1, 3)):
        pos = rng.randint(0, len(s))
        ch = SURROGATE if rng.random() < 0.01 else rng.choice(ALPHABET)
        op = rng.randrange(4)
        if op == 0:
            s = s[:pos] + ch + s[pos:]
        elif op == 1:
            s = s[:pos] + s[pos + 1:]
        elif op == 2:
            s = s[:pos] + ch + s[pos + 1:]
        elif op == 3 and s:  # swap a number for a random one (out of range or with a leading zero)
            s = s.replace(rng.choice(s.split(".") or ["0"]) or "0", str(rng.choice([0, 7, 255, 256, 999, 1000])), 1)
    return s


def make_batch(rng: random.Random, nprng: np.random.Generator, style: str, d: int, n: int) -> list:
    codes = np.packbits(nprng.integers(0, 2, (n, d), dtype=np.uint8), axis=1)
    texts = binllm.to_bits(codes, d) if style == "bits" else binllm.to_dotted(codes, d)
    out = []
    for t in texts:
        r = rng.random()
        if r < 0.3:
            s = t
        elif r < 0.95:
            s = mutate(rng, t)
        else:
            s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            try:
                s = s.encode("utf-8")
            except UnicodeEncodeError:
                pass
        out.append(s)
    return out


def expect_error(parse, texts: list, d: int, row: int) -> None:
    try:
        parse(texts, d)
    except ValueError as e:
        assert str(e).startswith(f"texts[{row}]"), (texts[row], str(e))
    else:
        raise AssertionError(f"accepted invalid texts[{row}] = {texts[row]!r} (d={d})")


def check_batch(style: str, texts: list, d: int) -> tuple[int, int]:
    """Checks one batch three ways; returns (accepted, rejected).

    The whole batch must fail at the oracle's first bad row; all valid rows parsed together must
    give the oracle's bytes; every invalid row alone must be rejected."""
    parse = binllm.from_bits if style == "bits" else binllm.from_dotted
    oracle = oracle_bits if style == "bits" else oracle_dotted
    want = [oracle(t, d) for t in texts]
    bad = [i for i, w in enumerate(want) if w is None]
    good = [i for i, w in enumerate(want) if w is not None]
    if bad:
        expect_error(parse, texts, d, bad[0])
    got = parse([texts[i] for i in good], d)
    assert got.tobytes() == b"".join(want[i] for i in good), (style, d)
    for i in bad:
        expect_error(parse, [texts[i]], d, 0)
    return len(good), len(bad)


def run_fuzz(seed: int, total: int) -> tuple[int, int]:
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    acc = rej = done = 0
    while done < total:
        d = rng.choice(DIMS)
        style = rng.choice(["bits", "dotted"])
        texts = make_batch(rng, nprng, style, d, 500)
        a, r = check_batch(style, texts, d)
        acc, rej, done = acc + a, rej + r, done + len(texts)
    return acc, rej


def test_fuzz_parsers_default():
    acc, rej = run_fuzz(seed=11, total=60_000)
    assert acc + rej == 60_000 and acc > 10_000 and rej > 10_000  # both sides are exercised


@pytest.mark.slow
def test_fuzz_parsers_1m():
    acc, rej = run_fuzz(seed=12, total=1_200_000)
    assert acc + rej >= 1_200_000


def pack_case(rng: np.random.Generator, dtype: str) -> np.ndarray:
    n, d = int(rng.integers(0, 20)), int(rng.integers(1, 140))
    with np.errstate(over="ignore"):  # float16 overflows to inf on purpose
        x = (rng.standard_normal((n, d)) * 10.0 ** rng.integers(-8, 8)).astype(dtype)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 5e-324, -5e-324, 6e-8, -6e-8], dtype=np.float64)
    mask = rng.random((n, d)) < 0.2
    x[mask] = specials[rng.integers(0, len(specials), int(mask.sum()))].astype(dtype)
    if rng.random() < 0.3 and n:
        x[rng.integers(0, n), rng.integers(0, d)] = np.nan
    layout = rng.integers(0, 3)
    if layout == 1:  # strided view
        big = np.zeros((n, 2 * d), dtype)
        big[:, ::2] = x
        x = big[:, ::2]
    elif layout == 2:  # transposed view
        x = np.asfortranarray(x)
    return x


def run_pack_fuzz(seed: int, cases: int) -> int:
    rng = np.random.default_rng(seed)
    nan_cases = 0
    for i in range(cases):
        x = pack_case(rng, ["float16", "float32", "float64"][i % 3])
        nan = np.argwhere(np.isnan(x))
        if len(nan):
            nan_cases += 1
            r, c = nan[0]
            with pytest.raises(ValueError, match=rf"x contains NaN at row {r}, column {c} "):
                binllm.pack_signs(x)
        else:
            np.testing.assert_array_equal(binllm.pack_signs(x), np.packbits(x.astype(np.float64) >= 0, axis=1))
    return nan_cases


@pytest.mark.usefixtures("variant")
def test_fuzz_pack_signs():
    assert run_pack_fuzz(seed=21, cases=200) > 20
