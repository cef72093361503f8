"""The package's layers, read from its imports (ast, nothing imported): no import circle, no
upward import, no module using another's private names, and every old module path of
``binllm._moved`` still importing to its new home. docs/ARCHITECTURE.md draws the layers."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import PKG_PARENT

ROOT = Path(__file__).resolve().parents[1] / "binllm"

# Layer of each module prefix, lowest first; a module may import its own layer and those below.
LAYERS = [
    ("leaves", ["binllm._types", "binllm._io", "binllm._moved", "binllm._cpuinfo", "binllm._core", "binllm._cuda_ext",
                "binllm.progress", "binllm.threads", "binllm.locks", "binllm.metrics"]),
    ("kernels", ["binllm.kernels", "binllm"]),  # the package root is the kernel API (binllm.pack_signs, ...)
    ("data", ["binllm.data"]),
    ("cf", ["binllm.cf"]),
    ("llm", ["binllm.llm"]),
    ("lists", ["binllm.lists"]),
    ("run", ["binllm.run"]),
    ("faces", ["binllm.cli", "binllm.__main__", "binllm.bench"]),
]


def layer_of(mod: str) -> int:
    best, rank = "", -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    assert rank >= 0, f"{mod} is in no layer: add it to LAYERS"
    return rank


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    for f in list(ROOT.glob("*.pyi")):  # the extensions (their stubs stand for them)
        out[f"binllm.{f.stem}"] = f
    return out


MODS = modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for n in node.body:
                skip.update(id(x) for x in ast.walk(n))
    return skip


def imports(mod: str) -> list[tuple[str, list[str], bool, ast.AST]]:
    """(imported module, names taken from it, at module level, node) for each binllm import of `mod`,
    outside ``if TYPE_CHECKING:`` blocks."""
    path = MODS[mod]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    top = {id(n) for n in tree.body} | {id(x) for n in tree.body if isinstance(n, (ast.If, ast.Try))
                                        for x in ast.walk(n)}
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "binllm":
                    out.append((a.name, [], id(node) in top, node))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if base.split(".")[0] != "binllm":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODS:  # "from pkg import module"
                    out.append((sub, [], id(node) in top, node))
                else:
                    out.append((base, [a.name], id(node) in top, node))
    return out


def test_every_module_has_a_layer_and_a_docstring():
    for mod, path in MODS.items():
        layer_of(mod)
        if path.suffix == ".py" and path.stat().st_size:
            assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{mod} has no docstring"


def test_no_upward_imports():
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
           for m in MODS for t, _, _, _ in imports(m) if layer_of(t) > layer_of(m)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_circles():
    """Module-level imports form no cycle (an import inside a function runs later and is no circle)."""
    graph = {m: sorted({t for t, _, top, _ in imports(m) if top and t != m and t in MODS}) for m in MODS}
    # a package's __init__ runs before its submodules: "binllm.x.y" imports "binllm.x" implicitly, which
    # is no edge of ours; binllm itself is imported first by every module and is left out
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if t == "binllm":
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_uses_another_modules_private_names():
    bad = []
    for m, path in MODS.items():
        if path.suffix != ".py":
            continue
        aliases: set[str] = set()
        for t, names, _, node in imports(m):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and t != m:
                    bad.append(f"{m} imports {t}.{n}")
            if not names and isinstance(node, ast.ImportFrom):
                aliases.update(a.asname or a.name for a in node.names)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{m} uses {node.value.id}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(sorted(set(bad)))


def test_the_layer_check_catches_what_it_guards(tmp_path, monkeypatch):
    """The checks above are not vacuous: a planted upward import, circle and private import are found."""
    planted = {
        "binllm.kernels.planted_up": "from binllm.run import stages\n",
        "binllm.cf.planted_a": "from binllm.cf import planted_b\n",
        "binllm.cf.planted_b": "from binllm.cf import planted_a\n",
        "binllm.llm.planted_private": "from binllm.llm.scoring import _not_public\n",
    }
    for mod, text in planted.items():
        f = tmp_path / (mod.replace(".", "_") + ".py")
        f.write_text('"""planted"""\n' + text)
        monkeypatch.setitem(MODS, mod, f)
    with pytest.raises(AssertionError, match="planted_up"):
        test_no_upward_imports()
    with pytest.raises(AssertionError, match="planted_a -> binllm.cf.planted_b -> binllm.cf.planted_a"):
        test_no_import_circles()
    with pytest.raises(AssertionError, match="_not_public"):
        test_no_module_uses_another_modules_private_names()


def test_old_module_paths_import_their_new_modules():
    from binllm import _moved

    for old, new in _moved.MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            __import__(old)  # as an import statement does (importlib.import_module adds a frame of its own)
            mod = sys.modules[old]
        assert mod is importlib.import_module(new), old
        deprecated = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        if old in _moved.STABLE:
            assert not deprecated, old
        else:
            assert len(deprecated) == 1 and new in str(deprecated[0].message), old
            assert deprecated[0].filename == __file__  # the warning names the importing line


def test_import_binllm_leaves_torch_and_transformers_out():
    code = ("import sys, binllm, binllm.llm, binllm.run, binllm.lists, binllm.cf, binllm.kernels; "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'peft') if m in sys.modules))")
    # the package the tests import (installed, or a checkout with its built core), not the bare source tree
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PKG_PARENT,
                         env=env)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
