"""The data suite: data preparation speed and memory on a generated
Amazon-2018-style reviews file (JSON lines with the text fields the real file
has; 5M reviews, 200k with ``--quick``), read by binllm's streaming reader + the
Amazon-Book protocol, side by side with pandas' chunked ``read_json(lines=True)``
on the same file. Each measurement runs in a fresh process so its peak RSS is
its own. Each row's input bytes per second are set against the machine's read
bandwidth (the file is in the page cache after it is written).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from binllm.bench import machine, report
from binllm.bench.report import Row, bound_by

COLUMNS = ["impl", "read_s", "total_s", "rows_per_s", "input_GBps", "binllm_x", "kept_rows", "peak_rss_gb",
           "frac_limit", "bound"]


def generate(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """Writes `n` reviews (``reviews.json``) and their items' metadata (``meta.json``) into `folder`."""
    rng = np.random.default_rng(seed)
    reviews, meta = folder / "reviews.json", folder / "meta.json"
    n_users, n_items = max(1000, n // 40), max(500, n // 100)
    t0 = 1_451_606_400  # 2016-01-01
    with open(reviews, "w") as f:
        for start in range(0, n, 500_000):
            m = min(500_000, n - start)
            u = rng.integers(0, n_users, m)
            i = rng.zipf(1.4, m) % n_items
            r = rng.integers(1, 6, m)
            t = t0 + rng.integers(0, 3 * 365 * 86400, m)
            f.write("".join(
                f'{{"overall": {r[k]}.0, "verified": true, "reviewTime": "01 1, 2017", "reviewerID": "A{u[k]:08d}", '
                f'"asin": "B{i[k]:09d}", "reviewerName": "reader", "reviewText": "A fine book with a long review '
                f'text that the reader skips.", "summary": "Fine", "unixReviewTime": {t[k]}}}\n' for k in range(m)))
    with open(meta, "w") as f:
        for k in range(n_items):
            f.write(json.dumps({"asin": f"B{k:09d}", "title": f"Book number {k}", "description": ["text"] * 3,
                                "category": ["Books"]}) + "\n")
    return reviews, meta


OURS = r'''
import sys, time, json, resource
from binllm import data
t = time.perf_counter()
r = data.read_amazon(sys.argv[1], sys.argv[2], year=2017, progress=False)
t_read = time.perf_counter() - t
p = data.prepare(r, data.Protocol("amazon-book", label_min=5, split="year_december", year=2017, min_count=20,
                                  valid_small=0.25))
print(json.dumps({"read_s": t_read, "total_s": time.perf_counter() - t, "kept_rows": int(len(p.rows)),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
'''

PANDAS = r'''
import sys, time, json, resource
import pandas as pd
t = time.perf_counter()
parts = []
for chunk in pd.read_json(sys.argv[1], lines=True, chunksize=500_000):
    c = chunk[["reviewerID", "asin", "overall", "unixReviewTime"]]
    ts = c["unixReviewTime"]
    parts.append(c[(ts >= 1483228800) & (ts < 1514764800)])
df = pd.concat(parts)
print(json.dumps({"read_s": time.perf_counter() - t, "total_s": time.perf_counter() - t, "kept_rows": int(len(df)),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
'''


def measure(code: str, *args: str) -> dict[str, float]:
    """Runs `code` in a fresh Python with this binllm importable; its last stdout line is the result."""
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=3600, env=env,
                       cwd=pkg_parent, check=False)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    out: dict[str, float] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def run(out_dir: str | Path, quick: bool = False, rows: int | None = None, pandas: bool = True,
        progress: bool = True) -> Path:
    """Runs the data suite on `rows` generated reviews (default 5M; 200k with `quick`) and writes
    ``out_dir/data[_quick].md|csv|png``; returns the .md path. `pandas`: also time pandas."""
    n = rows or (200_000 if quick else 5_000_000)
    name = "data_quick" if quick else "data"
    say = report.Say("data", progress)
    threads = sorted({1, machine.hardware_threads()})
    limits, facts = machine.start(say, threads, ("numpy", "pandas", "pyarrow"))
    read_bw = limits.read_bytes_per_s[max(threads)]
    out: list[Row] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        say(f"generating {n:,} reviews")
        t = time.perf_counter()
        reviews, meta = generate(Path(tmp), n)
        gen_s = time.perf_counter() - t
        size = reviews.stat().st_size
        lim = [("read bandwidth (input JSON bytes)", read_bw)]
        say("binllm read_amazon + prepare (fresh process)")
        ours = measure(OURS, str(reviews), str(meta))
        ours_rate = n / ours["total_s"]
        out.append({"impl": "binllm read_amazon (pyarrow stream, year filter) + prepare(amazon-book)", **ours,
                    "rows_per_s": ours_rate, "input_GBps": size / ours["total_s"] / 1e9,
                    **bound_by(size / ours["total_s"], lim)})
        if pandas:
            say("pandas read_json (fresh process)")
            pd_ = measure(PANDAS, str(reviews))
            out.append({"impl": "pandas read_json(lines=True, chunksize=500k) + year filter (read only)", **pd_,
                        "rows_per_s": n / pd_["total_s"], "input_GBps": size / pd_["total_s"] / 1e9,
                        "binllm_x": ours_rate / (n / pd_["total_s"]), **bound_by(size / pd_["total_s"], lim)})
    notes = (f"`binllm bench data{' --quick' if quick else ''}`. A generated Amazon-2018-style reviews file: {n:,} "
             f"JSON lines ({size / 1e9:.2f} GB, with review text fields), reviews spread over 2016-2018, generated "
             f"in {gen_s:.0f}s. rows_per_s counts input reviews. binllm's row includes the whole protocol (year "
             "filter, > 20 ratings filter, December split, id remap, histories); pandas' row only reads and "
             "filters the year. `frac_limit`: input bytes/s over the machine's read bandwidth at "
             f"{max(threads)} thread(s) (parsing JSON, not memory, bounds both; the fraction says how far).")
    path = report.write_table(out_dir, name, out, COLUMNS, facts, notes)
    report.bar_plot(Path(out_dir) / f"{name}.png", out, "impl", "rows_per_s", "reviews per second")
    return path
