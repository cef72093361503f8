"""The hand-written _core.pyi lists exactly the built module's functions, parameters and defaults,
and the public API is documented and typed without ``Any``."""
import ast
import inspect
import re
from pathlib import Path

import binllm
from binllm import _core

_NO_DEFAULT = "<no default>"


def _split_params(params: str) -> list[str]:
    """Splits a pybind11 parameter list at top-level commas (types such as tuple[int, int] hold commas)."""
    out, depth, cur = [], 0, ""
    for ch in params:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in out + [cur] if p.strip()]


def stub_functions() -> dict[str, list[tuple[str, object]]]:
    tree = ast.parse((Path(binllm.__file__).parent / "_core.pyi").read_text())
    out = {}
    for f in tree.body:
        if isinstance(f, ast.FunctionDef):
            args = f.args.args
            defaults = [_NO_DEFAULT] * (len(args) - len(f.args.defaults)) + [
                ast.literal_eval(d) for d in f.args.defaults]
            out[f.name] = [(a.arg, dflt) for a, dflt in zip(args, defaults)]
    return out


def module_functions() -> dict[str, list[tuple[str, object]]]:
    out = {}
    for name, obj in vars(_core).items():
        if name.startswith("_") or not callable(obj):
            continue
        sig = obj.__doc__.splitlines()[0]  # pybind11: "name(arg: type = default, ...) -> ret"
        params = re.match(rf"{name}\((.*)\) ->", sig).group(1)
        out[name] = []
        for p in _split_params(params):
            head, _, default = p.partition(" = ")
            out[name].append((head.split(":")[0].strip(),
                              ast.literal_eval(default) if default else _NO_DEFAULT))
    return out


def test_split_params_keeps_bracketed_commas():
    assert _split_params("a: tuple[int, int] = (1, 2), b: str = 'x'") == ["a: tuple[int, int] = (1, 2)", "b: str = 'x'"]


def test_stub_matches_module():
    """Names, order and default values (pybind11 shows defaults as Python literals in the signature line)."""
    stub, built = stub_functions(), module_functions()
    assert sorted(stub) == sorted(built)
    for name in built:
        assert stub[name] == built[name], name


def test_stub_defaults_are_compared():
    # guard against a parser that silently drops defaults: the core has some, and they are seen
    built = module_functions()
    assert ("kind", "dot") in built["score_all"] and ("out_dtype", "int32") in built["score_all"]
    assert ("out", None) in built["score_all"] and ("out", "list") in built["format_bits"]


def test_public_api_is_typed_and_documented():
    for name in binllm.__all__:
        obj = getattr(binllm, name)
        if inspect.isfunction(obj):
            assert obj.__doc__, name
            sig = inspect.signature(obj)
            annotations = [p.annotation for p in sig.parameters.values()] + [sig.return_annotation]
            assert all(a is not inspect.Parameter.empty for a in annotations), name
            # `from __future__ import annotations` keeps them as strings; Any says nothing to a user
            assert not any(re.search(r"\bAny\b", str(a)) for a in annotations), (name, annotations)


def test_cuda_stub_matches_bindings_source():
    """_cuda_ext.pyi lists the functions and constants that csrc/bindings/cuda_module.cpp defines
    (read from the source, so this runs on builds without the CUDA module too); the binding lambdas
    name no arguments, so the stub's parameters must all be positional-only."""
    src = (Path(__file__).resolve().parents[1] / "csrc" / "bindings" / "cuda_module.cpp").read_text()
    tree = ast.parse((Path(binllm.__file__).parent / "_cuda_ext.pyi").read_text())
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    consts = {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    assert sorted(funcs) == sorted(re.findall(r'm\.def\("(\w+)"', src))
    assert sorted(consts) == sorted(re.findall(r'm\.attr\("(\w+)"\)', src))
    for name, f in funcs.items():
        assert not f.args.args and not f.args.kwonlyargs, name
    # and as many parameters as each binding lambda takes
    lambdas = {m.group(1): m.group(2) for m in re.finditer(r'm\.def\("(\w+)",\s*\[\]\(([^)]*)\)', src)}
    assert len(lambdas) >= 5
    for name, params in lambdas.items():
        n = len([p for p in params.split(",") if p.strip()])
        assert len(funcs[name].args.posonlyargs) == n, (name, n)
