"""Type stubs of the CUDA kernels module (binllm._cuda_ext, csrc/bindings/cuda_module.cpp).

Built only where nvcc was found. Every function takes raw device pointers (``int``, from
``Tensor.data_ptr()``), the CUDA device index and a stream handle, validates nothing itself (that is
``binllm.kernels.cuda``'s job) and raises RuntimeError naming the launch that failed. The
bindings name no arguments, so all are positional.
"""

FLOAT_TYPES: dict[str, int]
UNPACK_TYPES: dict[str, int]
SCORE_KINDS: dict[str, int]

def pack_signs(
    dev: int, stream: int, dtype: int, x: int, n: int, d: int, s0: int, s1: int, out: int, first_nan: int, /
) -> None: ...
def unpack(dev: int, stream: int, codes: int, n: int, d: int, out_type: int, out: int, /) -> None: ...
def score_pairs(dev: int, stream: int, kind: int, a: int, b: int, n: int, d: int, out: int, /) -> None: ...
def score_all(
    dev: int, stream: int, kind: int, a: int, n: int, b: int, m: int, d: int, out16: bool, out: int, /
) -> None: ...
def topk_workspace_bytes(n: int, d: int, k: int, /) -> int: ...
def topk(
    dev: int, stream: int, queries: int, n: int, items: int, m: int, d: int, k: int, scores: int, indices: int,
    workspace: int, /
) -> None: ...
def build_info() -> dict[str, int | str]: ...
