"""Data preparation speed and memory: a generated Amazon-2018-style file of 5M
reviews (JSON lines, with the text fields the real file has) read by binllm's
streaming reader + the Amazon-Book protocol, side by side with pandas'
chunked ``read_json(lines=True)`` on the same file. Each measurement runs in a
fresh process so its peak RSS is its own. Writes bench/results/data.md/.csv.

    python bench/bench_data.py [--rows 5000000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import environment, write_table  # noqa: E402


def generate(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
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


def measure(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--skip-pandas", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        t = time.perf_counter()
        reviews, meta = generate(Path(tmp), args.rows)
        gen_s = time.perf_counter() - t
        size_gb = reviews.stat().st_size / 1e9
        rows = []
        ours = measure(OURS, str(reviews), str(meta))
        rows.append({"impl": "binllm read_amazon (pyarrow stream, year filter) + prepare(amazon-book)",
                     **ours, "rows_per_s": args.rows / ours["total_s"]})
        if not args.skip_pandas:
            pd_ = measure(PANDAS, str(reviews))
            rows.append({"impl": "pandas read_json(lines=True, chunksize=500k) + year filter (read only)",
                         **pd_, "rows_per_s": args.rows / pd_["total_s"],
                         "binllm_x": (args.rows / ours["total_s"]) / (args.rows / pd_["total_s"])})
    write_table("data", rows, ["impl", "read_s", "total_s", "rows_per_s", "binllm_x", "kept_rows", "peak_rss_gb"],
                environment(),
                f"A generated Amazon-2018-style reviews file: {args.rows:,} JSON lines ({size_gb:.2f} GB, with "
                f"review text fields), reviews spread over 2016-2018, generated in {gen_s:.0f}s. rows_per_s counts "
                "input reviews. binllm's row includes the whole protocol (year filter, > 20 ratings filter, "
                "December split, id remap, histories); pandas' row only reads and filters the year.")
    print(open(os.path.join(os.path.dirname(__file__), "results", "data.md")).read().split("Environment")[0])


if __name__ == "__main__":
    main()
