"""Shared benchmark plumbing: timing (warm-up, repeats, median and spread),
the environment record, and table/CSV/plot writers under bench/results/."""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, budget_s: float = 60.0) -> dict:
    """Median and spread of `repeats` timed calls after `warmup` untimed ones.
    Stops early (never below 3 repeats) when the budget is spent."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def environment() -> dict:
    import numpy as np

    import binllm

    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
        simd = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("popcnt", "f16c"))
    except (OSError, StopIteration):
        simd = []
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu,
        "cpu_flags": " ".join(simd),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "binllm": binllm.build_info(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }
    for mod in ("torch", "faiss"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    try:
        env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    return env


def write_table(name: str, rows: list[dict], columns: list[str], env: dict, notes: str = "") -> Path:
    """Writes bench/results/<name>.md (table + environment) and <name>.csv atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = [f"# {name}", "", notes.strip(), "", "| " + " | ".join(columns) + " |",
          "|" + "---|" * len(columns)]
    for r in rows:
        md.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    md += ["", "Environment:", "", "```json", json.dumps(env, indent=1, default=str), "```", ""]
    path = RESULTS / f"{name}.md"
    _atomic_write(path, "\n".join(md))
    tmp = RESULTS / f"{name}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, RESULTS / f"{name}.csv")
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)
