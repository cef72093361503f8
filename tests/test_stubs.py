"""The hand-written _core.pyi lists exactly the built module's functions and parameters."""
import ast
import inspect
import re
from pathlib import Path

import binllm
from binllm import _core


def stub_functions():
    tree = ast.parse((Path(binllm.__file__).parent / "_core.pyi").read_text())
    return {f.name: [a.arg for a in f.args.args] for f in tree.body if isinstance(f, ast.FunctionDef)}


def module_functions():
    out = {}
    for name, obj in vars(_core).items():
        if name.startswith("_") or not callable(obj):
            continue
        sig = obj.__doc__.splitlines()[0]  # pybind11: "name(arg: type, ...) -> ret"
        params = re.match(rf"{name}\((.*)\) ->", sig).group(1)
        out[name] = [p.split(":")[0].strip() for p in params.split(",") if p.strip()]
    return out


def test_stub_matches_module():
    assert stub_functions() == module_functions()


def test_public_api_is_typed_and_documented():
    for name in binllm.__all__:
        obj = getattr(binllm, name)
        if inspect.isfunction(obj):
            assert obj.__doc__, name
            hints = inspect.signature(obj)
            assert all(p.annotation is not inspect.Parameter.empty for p in hints.parameters.values()), name
