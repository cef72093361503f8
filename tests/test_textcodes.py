"""Bit strings and dotted decimal: against Python oracles, round trips, strict parsing."""
import numpy as np
import pytest
import torch

import binllm

from conftest import DIMS, NS, random_codes


def ref_bits(codes, d):
    return ["".join(map(str, row)) for row in np.unpackbits(codes, axis=1, count=d)]


def ref_dotted(codes):
    return [".".join(str(int(v)) for v in row) for row in codes]


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", NS)
def test_format_matches_oracle(rng, n, d):
    c = random_codes(rng, n, d)
    assert binllm.to_bits(c, d) == ref_bits(c, d)
    assert binllm.to_dotted(c, d) == ref_dotted(c)


@pytest.mark.parametrize("d", [1, 9, 32, 64, 129])
def test_output_forms_agree(rng, d):
    c = random_codes(rng, 50, d)
    for fmt in (binllm.to_bits, binllm.to_dotted):
        as_list = fmt(c, d)
        arr = fmt(c, d, out="array")
        assert arr.dtype.kind == "S" and arr.shape == (50,)
        assert [x.decode() for x in arr.tolist()] == as_list
        buf, off = fmt(c, d, out="buffer")
        assert buf.dtype == np.uint8 and off.dtype == np.int64 and off.shape == (51,)
        raw = buf.tobytes()
        assert [raw[off[i]:off[i + 1]].decode() for i in range(50)] == as_list


def test_ipv4_example():
    x = np.array([[183, 7, 92, 240]], dtype=np.uint8)
    assert binllm.to_dotted(x, 32) == ["183.7.92.240"]
    assert binllm.to_bits(x, 32) == ["10110111000001110101110011110000"]
    np.testing.assert_array_equal(binllm.from_dotted(["183.7.92.240"], 32), x)


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", DIMS)
def test_roundtrip_pack_text_parse_unpack(rng, d):
    x = rng.standard_normal((40, d)).astype(np.float32)
    c = binllm.pack_signs(x)
    for out in ("list", "array"):
        np.testing.assert_array_equal(binllm.from_bits(binllm.to_bits(c, d, out=out), d), c)
        np.testing.assert_array_equal(binllm.from_dotted(binllm.to_dotted(c, d, out=out), d), c)
    back = binllm.unpack_signs(binllm.from_dotted(binllm.to_dotted(c, d), d), d)
    np.testing.assert_array_equal(back, np.where(x >= 0, 1.0, -1.0))


def test_parse_accepts_bytes_and_unicode_arrays(rng):
    c = random_codes(rng, 10, 24)
    texts = binllm.to_dotted(c, 24)
    np.testing.assert_array_equal(binllm.from_dotted([t.encode() for t in texts], 24), c)
    np.testing.assert_array_equal(binllm.from_dotted(np.array(texts), 24), c)  # dtype 'U'
    np.testing.assert_array_equal(binllm.from_dotted(tuple(texts), 24), c)


def test_torch_codes_format(rng):
    c = torch.from_numpy(random_codes(rng, 5, 16))
    assert binllm.to_dotted(c, 16) == ref_dotted(c.numpy())


@pytest.mark.parametrize(
    "text,why",
    [
        ("1.2.3", "too few numbers"),
        ("1.2.3.4.5", "too many numbers"),
        ("1.2.3.256", "larger than 255"),
        ("1.2.3.1000", "larger than 255"),
        ("01.2.3.4", "leading zero"),
        ("1.2.3.00", "leading zero"),
        ("1..3.4", "expected a number"),
        ("1.2.3.", "too few numbers"),
        ("1.2.3.4 ", "unexpected characters"),
        (" 1.2.3.4", "expected a number"),
        ("1,2,3,4", "expected '.'"),
        ("1.2.3.-4", "expected a number"),
        ("", "too few numbers"),
        ("1.2.3.４", "expected a number"),
    ],
)
def test_parse_dotted_strict(text, why):
    good = "9.8.7.6"
    with pytest.raises(ValueError, match=rf"texts\[1\] is not a valid 32-dimension dotted-decimal code \(.*{why}"):
        binllm.from_dotted([good, text, good], 32)


def test_parse_dotted_tail_bits():
    # d = 30: the last number may only use its top 6 bits
    np.testing.assert_array_equal(binllm.from_dotted(["1.2.3.252"], 30), [[1, 2, 3, 252]])
    with pytest.raises(ValueError, match="bits past dimension d"):
        binllm.from_dotted(["1.2.3.253"], 30)


@pytest.mark.parametrize(
    "text,why",
    [("0101", "wrong length"), ("010101011", "wrong length"), ("01010102", "characters other than"),
     ("0101 101", "characters other than"),
     ("01010a01", "characters other than")],
)
def test_parse_bits_strict(text, why):
    with pytest.raises(ValueError, match=rf"texts\[0\] is not a valid 8-dimension bit-string code \({why}"):
        binllm.from_bits([text], 8)


def test_parse_error_shows_text_and_first_bad_row():
    texts = ["1.1.1.1"] * 50_000
    texts[30_001] = "1.1.1.x"
    texts[40_000] = "bad"
    with pytest.raises(ValueError, match=r"texts\[30001\].*'1.1.1.x'"):
        binllm.from_dotted(texts, 32)


def test_parse_empty():
    assert binllm.from_bits([], 12).shape == (0, 2)
    assert binllm.from_dotted(np.array([], dtype="S5"), 12).shape == (0, 2)
