"""Import time of binllm, side by side with what it stands on: ``import binllm`` (numpy + the C++
core), the layer packages (``binllm.llm``, ``binllm.run``, ``binllm.lists``: still no torch), and
numpy and torch alone. Each import runs in a fresh interpreter, `--repeats` times; the table gives
the median and the spread of the wall time of the import statement, and which heavy modules each
import left in ``sys.modules``.

    python bench/bench_import.py [--repeats 15]   ->  bench/results/import.md, import.csv
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import environment, write_table

CASES = {
    "numpy": "import numpy",
    "binllm": "import binllm",
    "binllm + layers": "import binllm, binllm.cf, binllm.llm, binllm.lists, binllm.run",
    "torch": "import torch",
}
HEAVY = ("numpy", "torch", "transformers", "peft", "pandas")
PROBE = ("import sys, time, json\nt = time.perf_counter()\n{stmt}\nt = time.perf_counter() - t\n"
         "print(json.dumps([t, [m for m in {heavy!r} if m in sys.modules]]))")


def one(stmt: str) -> tuple[float, list[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(stmt=stmt, heavy=HEAVY)], capture_output=True,
                         text=True, check=True)
    t, mods = json.loads(out.stdout)
    return float(t), mods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    import os

    load = os.getloadavg()[0]
    rows = []
    for name, stmt in CASES.items():
        one(stmt)  # warm the file cache
        times, mods = [], []
        for _ in range(args.repeats):
            t, mods = one(stmt)
            times.append(t * 1e3)
        rows.append({"import": name, "statement": stmt, "median_ms": round(statistics.median(times), 1),
                     "min_ms": round(min(times), 1), "max_ms": round(max(times), 1),
                     "heavy_modules_loaded": " ".join(mods) or "-"})
    notes = (f"Wall time of the import statement in a fresh `{sys.executable}` process, {args.repeats} runs "
             "each after one warm-up (file cache warm), median [min, max]; 'heavy modules loaded' lists which of "
             f"{', '.join(HEAVY)} the import left in sys.modules. 1-minute load average at the start: {load:.1f} "
             "(above the core count the machine was shared and the times are inflated).")
    path = write_table("import", rows, list(rows[0]), environment(), notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
