"""binllm.kernels.torch_ops: the custom ops equal the eager functions and numpy oracles,
pass torch.library.opcheck, trace under fake tensors, torch.compile(fullgraph=True)
and torch.export, and reject bad input with the eager functions' errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import binllm
import binllm.kernels.torch_ops as ops
from binllm.cf import hashing

from conftest import PKG_PARENT, ref_pack

DIMS = [1, 7, 9, 33, 65]
NS = [0, 1, 17]


def t_codes(rng, n: int, d: int) -> torch.Tensor:
    return torch.from_numpy(ref_pack(rng.standard_normal((n, d))))


def ref_dot(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    ua = np.unpackbits(a, axis=1, count=d).astype(np.int64) * 2 - 1
    ub = np.unpackbits(b, axis=1, count=d).astype(np.int64) * 2 - 1
    return ua @ ub.T


def ref_topk(q: np.ndarray, items: np.ndarray, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = ref_dot(q, items, d)
    # best first, equal scores by the lower index: a stable sort of -score
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


# ------------------------------------------------------------------ registration


def test_import_binllm_stays_light():
    code = "import sys, binllm; print('torch' in sys.modules, 'binllm.kernels.torch_ops' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=PKG_PARENT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


def test_ops_are_registered_in_the_binllm_namespace():
    for name in ("pack_signs", "unpack_signs", "dot_all", "hamming_all", "topk", "sign_ste"):
        packet = getattr(torch.ops.binllm, name)
        assert packet.default._schema.name == f"binllm::{name}"


# ---------------------------------------------------------- results vs oracles


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_pack_signs_matches_eager_and_numpy(rng, n, d, dtype):
    x = torch.from_numpy(rng.standard_normal((n, d))).to(dtype)
    if n and d > 1:
        x[0, 0], x[0, 1] = 0.0, -0.0  # both zeros are +1
    got = ops.pack_signs(x)
    assert got.dtype == torch.uint8 and got.shape == (n, (d + 7) // 8)
    assert torch.equal(got, binllm.pack_signs(x))
    np.testing.assert_array_equal(got.numpy(), ref_pack(x.float().numpy()))


def test_pack_signs_non_contiguous(rng):
    base = torch.from_numpy(rng.standard_normal((40, 23)).astype(np.float32))
    for x in (base.T, base[::3, 1::2], base.T[::2]):
        assert not x.is_contiguous()
        np.testing.assert_array_equal(ops.pack_signs(x).numpy(), ref_pack(x.numpy()))


def test_integer_ops_take_inputs_that_require_grad(rng):
    x = torch.from_numpy(rng.standard_normal((5, 12)).astype(np.float32)).requires_grad_()
    c = ops.pack_signs(torch.tanh(x))  # codes of an intermediate of a training graph: no gradient flows
    assert not c.requires_grad and torch.equal(c, binllm.pack_signs(x.detach()))
    with torch.inference_mode():
        assert torch.equal(ops.dot_all(c, c, 12), binllm.dot_all(c, c, 12))


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("out_dtype", ["int32", "int16"])
def test_dot_and_hamming_all_match_eager_and_numpy(rng, d, out_dtype):
    a, b = t_codes(rng, 13, d), t_codes(rng, 0 if d == 7 else 9, d)
    want = ref_dot(a.numpy(), b.numpy(), d)
    dot, ham = ops.dot_all(a, b, d, out_dtype), ops.hamming_all(a, b, d, out_dtype)
    assert dot.dtype == ham.dtype == getattr(torch, out_dtype) and dot.shape == ham.shape == want.shape
    np.testing.assert_array_equal(dot.numpy(), want)
    np.testing.assert_array_equal(ham.numpy(), (d - want) // 2)
    assert torch.equal(dot, binllm.dot_all(a, b, d, out_dtype))
    assert torch.equal(ham, binllm.hamming_all(a, b, d, out_dtype))


def test_scores_and_topk_on_non_contiguous_rows(rng):
    d = 65
    a, b = t_codes(rng, 30, d)[::3], t_codes(rng, 40, d)[1::2]
    assert not a.is_contiguous() and not b.is_contiguous()
    np.testing.assert_array_equal(ops.dot_all(a, b, d).numpy(), ref_dot(a.numpy(), b.numpy(), d))
    s, i = ops.topk(a, b, d, 5)
    rs, ri = ref_topk(a.numpy(), b.numpy(), d, 5)
    np.testing.assert_array_equal(s.numpy(), rs)
    np.testing.assert_array_equal(i.numpy(), ri)


@pytest.mark.parametrize("d", [1, 9, 33])
@pytest.mark.parametrize("k", [1, 4, 20])
def test_topk_matches_eager_and_numpy(rng, d, k):
    q, items = t_codes(rng, 7, d), t_codes(rng, 20, d)  # d=1: nearly all ties, ordered by index
    s, i = ops.topk(q, items, d, k)
    assert s.dtype == torch.int32 and i.dtype == torch.int64 and s.shape == i.shape == (7, k)
    es, ei = binllm.topk(q, items, d, k)
    assert torch.equal(s, es) and torch.equal(i, ei)
    rs, ri = ref_topk(q.numpy(), items.numpy(), d, k)
    np.testing.assert_array_equal(s.numpy(), rs)
    np.testing.assert_array_equal(i.numpy(), ri)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int8"])
def test_unpack_signs_matches_eager(rng, dtype):
    c = t_codes(rng, 11, 19)
    got = ops.unpack_signs(c, 19, dtype)
    assert torch.equal(got, binllm.unpack_signs(c, 19, dtype))
    np.testing.assert_array_equal(got.float().numpy(), np.unpackbits(c.numpy(), axis=1, count=19) * 2.0 - 1)


# ------------------------------------------------------ opcheck and fake tensors


def _op_cases(rng) -> list[tuple[object, tuple]]:
    x = torch.from_numpy(rng.standard_normal((9, 21)).astype(np.float32))
    a, b = t_codes(rng, 6, 21), t_codes(rng, 8, 21)
    return [
        (torch.ops.binllm.pack_signs.default, (x,)),
        (torch.ops.binllm.pack_signs.default, (x.T.to(torch.bfloat16),)),
        (torch.ops.binllm.unpack_signs.default, (a, 21, "float16")),
        (torch.ops.binllm.dot_all.default, (a, b, 21, "int32")),
        (torch.ops.binllm.hamming_all.default, (a, b[::2], 21, "int16")),
        (torch.ops.binllm.topk.default, (a, b, 21, 3)),
        (torch.ops.binllm.sign_ste.default, (x.clone().requires_grad_(), False)),
        (torch.ops.binllm.sign_ste.default, (x.double().requires_grad_(), True)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_opcheck(rng, case):
    op, args = _op_cases(rng)[case]
    torch.library.opcheck(op, args)  # raises OpCheckError on any failure


def test_fake_tensors_give_shapes_and_dtypes():
    with FakeTensorMode():
        x = torch.empty(37, 65, dtype=torch.float16)
        a, b = torch.empty(37, 9, dtype=torch.uint8), torch.empty(11, 9, dtype=torch.uint8)
        c = ops.pack_signs(x)
        assert (c.shape, c.dtype) == ((37, 9), torch.uint8)
        u = ops.unpack_signs(a, 65, "bfloat16")
        assert (u.shape, u.dtype) == ((37, 65), torch.bfloat16)
        assert (ops.dot_all(a, b, 65).shape, ops.dot_all(a, b, 65).dtype) == ((37, 11), torch.int32)
        assert ops.hamming_all(a, b, 65, "int16").dtype == torch.int16
        s, i = ops.topk(a, b, 65, 4)
        assert (s.shape, s.dtype, i.shape, i.dtype) == ((37, 4), torch.int32, (37, 4), torch.int64)
        y = ops.sign_ste(torch.empty(2, 3, 5, dtype=torch.bfloat16))
        assert (y.shape, y.dtype) == ((2, 3, 5), torch.bfloat16)


# --------------------------------------------------------------------- bad input


def _bad_cases(rng) -> list[tuple[str, str, tuple, type, str]]:
    """(op name, eager name, args, error type, what the message must contain)."""
    x = torch.zeros(3, 4)
    a = t_codes(rng, 3, 12)  # 2 bytes per row
    return [
        ("pack_signs", "pack_signs", (torch.zeros(3, 4, dtype=torch.int32),), TypeError, "x must be a 2-D"),
        ("pack_signs", "pack_signs", (torch.zeros(12),), TypeError, "x must be a 2-D"),
        ("pack_signs", "pack_signs", (torch.zeros(3, 0),), ValueError, "at least one column"),
        ("dot_all", "dot_all", (a, a, 20), ValueError, "a has 2 bytes per row but d=20 needs 3"),
        ("dot_all", "dot_all", (a, a.int(), 12), TypeError, "b must be a 2-D uint8"),
        ("dot_all", "dot_all", (a, a, 0), ValueError, "d must be a positive"),
        ("dot_all", "dot_all", (a, a, 12, "int8"), ValueError, "out_dtype must be 'int32' or 'int16'"),
        ("hamming_all", "hamming_all", (a.T.contiguous().T, a, 12), ValueError, "contiguous bytes within a row"),
        ("topk", "topk", (a, a, 12, 0), ValueError, "k must be >= 1"),
        ("topk", "topk", (a, a, 12, 4), ValueError, "k must be <= the number of items (3)"),
        ("topk", "topk", (a, a.int(), 12, 1), TypeError, "items must be a 2-D uint8"),
        ("unpack_signs", "unpack_signs", (a, 12, "int4"), ValueError, "dtype must be one of"),
        ("unpack_signs", "unpack_signs", (x, 12), TypeError, "codes must be a 2-D uint8"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_input_same_error_as_eager_and_under_fake_tensors(rng, case):
    name, eager_name, args, err, text = _bad_cases(rng)[case]
    with pytest.raises(err) as eager:
        getattr(binllm, eager_name)(*args)
    with pytest.raises(err) as op:
        getattr(ops, name)(*args)
    assert str(op.value) == str(eager.value)  # the kernel is the eager function: same message
    assert text in str(op.value)
    # At trace time (fake tensors: no data) the fake kernel raises the same kind of error.
    mode = FakeTensorMode()
    fake_args = tuple(mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in args)
    with mode, pytest.raises(err, match=text.split(" (")[0].replace("'", ".")):
        getattr(ops, name)(*fake_args)


def test_bad_input_data_checks_and_non_tensors():
    x = torch.zeros(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN at row 1, column 2"):
        ops.pack_signs(x)
    tail = torch.tensor([[0b0000_0001]], dtype=torch.uint8)  # d=7: last bit is past d
    with pytest.raises(ValueError, match="bits set past dimension d=7"):
        ops.dot_all(tail, tail, 7)
    with pytest.raises(TypeError, match="x must be a torch tensor.*got ndarray"):
        ops.pack_signs(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="items must be a torch tensor.*got list"):
        ops.topk(tail, [[1]], 7, 1)
    with pytest.raises(TypeError, match="x must be a floating-point tensor; got int64"):
        ops.sign_ste(torch.arange(3))


# ------------------------------------------------------------------- sign_ste


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_sign_ste_forward(dtype):
    x = torch.tensor([[-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0, float("nan"), float("inf"), -float("inf")]])
    want = torch.tensor([[-1, 1, 1, 1, -1, 1, -1, 1, -1]], dtype=dtype)
    x = x.to(dtype)
    if x[0, 3] == 0:  # float16: +-1e-30 underflow to +-0, which are +1
        want[0, 4] = 1
    got = ops.sign_ste(x)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(got, hashing.sign_ste(x))


@pytest.mark.parametrize("clip", [False, True])
def test_sign_ste_gradient_is_straight_through(rng, clip):
    x = torch.from_numpy(rng.standard_normal((6, 5)) * 1.5).requires_grad_()
    up = torch.from_numpy(rng.standard_normal((6, 5)))
    ops.sign_ste(x, clip).backward(up)
    want = up * (x.detach().abs() <= 1) if clip else up
    assert torch.equal(x.grad, want)
    # the Jacobian is the identity (or the |x| <= 1 mask): one backward per basis vector
    jac = torch.autograd.functional.jacobian(lambda v: ops.sign_ste(v, clip), x.detach()[0])
    mask = (x.detach()[0].abs() <= 1).double() if clip else torch.ones(5, dtype=torch.float64)
    assert torch.equal(jac, torch.diag(mask))
    x2 = x.detach().clone().requires_grad_()
    hashing.sign_ste(x2, clip).backward(up)
    assert torch.equal(x.grad, x2.grad)


# -------------------------------------------------- torch.compile and torch.export


def _retrieve(x: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = ops.pack_signs(torch.tanh(x))
    scores = ops.dot_all(c, items, 21)
    s, i = ops.topk(c, items, 21, 3)
    return scores.float().mean(1), s, i


def test_compile_fullgraph_without_graph_breaks(rng):
    x = torch.from_numpy(rng.standard_normal((5, 21)).astype(np.float32))
    items = t_codes(rng, 12, 21)
    explained = torch._dynamo.explain(_retrieve)(x, items)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    # aot_eager traces through the fake kernels (as inductor does) without inductor's C++ build time
    compiled = torch.compile(_retrieve, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, items), _retrieve(x, items)):
        assert torch.equal(got, want)


def _retrieve_top_level(x: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """_retrieve written with the natural calls of the package root, not binllm.kernels.torch_ops."""
    c = binllm.pack_signs(torch.tanh(x))
    s, i = binllm.topk(c, items, 21, 3)
    u = binllm.unpack_signs(c, 21)
    return binllm.dot_all(c, items, 21).float().mean(1), binllm.hamming_all(c, items, 21), s, i, u


def test_top_level_functions_compile_fullgraph_on_tensors(rng):
    """binllm.pack_signs & co. hand CPU tensors to the torch ops, so the plain call traces (it used to break
    the graph at the numpy view) and gives what the ops and the reference give."""
    x = torch.from_numpy(rng.standard_normal((5, 21)).astype(np.float32))
    items = t_codes(rng, 12, 21)
    explained = torch._dynamo.explain(_retrieve_top_level)(x, items)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(_retrieve_top_level, fullgraph=True, backend="aot_eager")
    got, eager = compiled(x, items), _retrieve_top_level(x, items)
    for g, e in zip(got, eager):
        assert torch.equal(g, e)
    assert torch.equal(eager[0], _retrieve(x, items)[0])
    np.testing.assert_array_equal(eager[2].numpy(), ref_topk(ref_pack(torch.tanh(x).numpy()), items.numpy(), 21, 3)[0])
    # numpy in, numpy out, as before
    assert isinstance(binllm.pack_signs(x.numpy()), np.ndarray)


class _HashLike(torch.nn.Module):
    def __init__(self, d: int = 21):
        super().__init__()
        self.d = d
        self.proj = torch.nn.Linear(d, d)

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        bu = ops.sign_ste(torch.tanh(self.proj(u)))
        bi = ops.sign_ste(torch.tanh(self.proj(i)))
        return (bu * bi).sum(-1)


def test_sign_ste_compiles_and_gradients_match(rng):
    torch.manual_seed(0)
    model = _HashLike()
    u, i = (torch.from_numpy(rng.standard_normal((8, 21)).astype(np.float32)) for _ in range(2))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (model, compiled):
        model.zero_grad()
        out = fn(u, i)
        out.sum().backward()
        grads.append((out.detach(), model.proj.weight.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


class _Retriever(torch.nn.Module):
    def __init__(self, items: torch.Tensor, d: int):
        super().__init__()
        self.d = d
        self.proj = torch.nn.Linear(d, d)
        self.register_buffer("items", items)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = ops.pack_signs(self.proj(x))
        return ops.topk(c, self.items, self.d, 4) + (ops.hamming_all(c, self.items, self.d, "int16"),)


def test_export(rng):
    torch.manual_seed(0)
    m = _Retriever(t_codes(rng, 10, 21), 21)
    x = torch.from_numpy(rng.standard_normal((6, 21)).astype(np.float32))
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("n")},))  # the fake kernels take SymInts
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"binllm.pack_signs.default", "binllm.topk.default", "binllm.hamming_all.default"} <= targets
    x2 = torch.from_numpy(rng.standard_normal((9, 21)).astype(np.float32))
    for got, want in zip(ep.module()(x2), m(x2)):
        assert got.shape[0] == 9 and torch.equal(got, want)


@pytest.mark.slow
def test_inductor_compile_of_training_and_retrieval(rng):
    """torch.compile with the default (inductor) backend: tens of seconds on 2 cores."""
    torch.manual_seed(0)
    model = _HashLike()
    u, i = (torch.from_numpy(rng.standard_normal((8, 21)).astype(np.float32)) for _ in range(2))
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(u, i)
    out.sum().backward()
    g = model.proj.weight.grad.clone()
    model.zero_grad()
    want = model(u, i)
    want.sum().backward()
    assert torch.equal(out.detach(), want.detach())
    torch.testing.assert_close(g, model.proj.weight.grad)
    x, items = u, t_codes(rng, 12, 21)
    for got, w in zip(torch.compile(_retrieve, fullgraph=True)(x, items), _retrieve(x, items)):
        assert torch.equal(got, w)


@pytest.mark.gpu
def test_cuda_ops_equal_cpu(rng):
    if not torch.cuda.is_available():
        pytest.fail("no CUDA device")
    x = torch.from_numpy(rng.standard_normal((300, 65)).astype(np.float32))
    c = ops.pack_signs(x)
    xc = x.cuda()
    cc = ops.pack_signs(xc)
    assert cc.is_cuda and torch.equal(cc.cpu(), c)
    assert torch.equal(ops.dot_all(cc, cc[:40], 65).cpu(), ops.dot_all(c, c[:40], 65))
    assert torch.equal(ops.hamming_all(cc, cc[:40], 65, "int16").cpu(), ops.hamming_all(c, c[:40], 65, "int16"))
    for got, want in zip(ops.topk(cc[:7], cc, 65, 5), ops.topk(c[:7], c, 65, 5)):
        assert torch.equal(got.cpu(), want)
    assert torch.equal(ops.unpack_signs(cc, 65, "float16").cpu(), ops.unpack_signs(c, 65, "float16"))
    assert torch.equal(ops.sign_ste(xc).cpu(), ops.sign_ste(x))
    items = ops.pack_signs(x[:12, :21])
    compiled = torch.compile(_retrieve, fullgraph=True)
    for got, want in zip(compiled(xc[:5, :21], items.cuda()), _retrieve(x[:5, :21], items)):
        torch.testing.assert_close(got.cpu(), want)  # tanh may round differently on the GPU near 0
