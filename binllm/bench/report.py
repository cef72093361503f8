"""Benchmark reporting: the timing rule, each row's share of the machine limit that
bounds it, progress lines, and the outputs of a suite.

Timing: one untimed warm-up call, then at least 3 (usually 5-7) timed calls; a
row gives their median and spread (min-max). ``frac_limit`` is the row's rate
divided by the rate the tightest applicable limit allows (``bound`` names it),
so 1.0 means the row runs at the limit. Outputs: ``NAME.md`` (notes, the table,
the machine facts), ``NAME.csv`` (the table) and ``NAME.png`` (a plot when
matplotlib is installed), each written atomically through :mod:`binllm._io`.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from binllm._io import atomic_save, atomic_write_text
from binllm.bench.machine import summary

#: One table row: column name -> value (missing columns print empty).
Row = dict[str, Any]


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, budget_s: float = 60.0) -> dict[str, float]:
    """Median, min and max of `repeats` timed calls after `warmup` untimed ones (``n``: calls timed).
    Stops early, never below 3 calls, once `budget_s` seconds are spent."""
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


def bound_by(rate: float, limits: Iterable[tuple[str, float | None]]) -> dict[str, object]:
    """``{'frac_limit': rate / limit, 'bound': name}`` for the tightest of `limits`
    (name, the rate that limit allows, in the row's unit); empty when none applies."""
    fracs = [(rate / lim, name) for name, lim in limits if lim is not None and lim > 0]
    if not fracs:
        return {}
    frac, name = max(fracs)
    return {"frac_limit": frac, "bound": name}


class Say:
    """Progress lines on stderr (``[bench codes 12:00:01] ...``); silent when not `enabled`."""

    def __init__(self, suite: str, enabled: bool = True):
        self.suite, self.enabled = suite, enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[bench {self.suite} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt(v: object) -> str:
    """A cell: floats with 3 significant digits (thousands separated), None as empty."""
    if v is None:
        return ""
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def markdown(name: str, rows: Sequence[Row], columns: Sequence[str], facts: dict[str, object],
             notes: str = "") -> str:
    """The table as markdown: title, notes, the machine in short, the rows, then every machine
    fact as JSON."""
    md = [f"# {name}", "", notes.strip(), "", *(f"- {line}" for line in summary(facts)), "",
          "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    md += ["", "Machine facts:", "", "```json", json.dumps(facts, indent=1, default=str), "```", ""]
    return "\n".join(md)


def table_text(md: str) -> str:
    """The part of a :func:`markdown` text above the full machine facts (for the terminal)."""
    return md.split("\nMachine facts:", 1)[0].rstrip() + "\n"


def write_table(out_dir: str | Path, name: str, rows: Sequence[Row], columns: Sequence[str],
                facts: dict[str, object], notes: str = "") -> Path:
    """Writes ``out_dir/NAME.md`` and ``out_dir/NAME.csv`` atomically; returns the .md path."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out_dir / f"{name}.csv", buf.getvalue())
    return atomic_write_text(out_dir / f"{name}.md", markdown(name, rows, columns, facts, notes))


def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Saves a matplotlib figure atomically (PNG, 110 dpi) and closes it."""
    try:
        return atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def bar_plot(path: str | Path, rows: Sequence[Row], label: str, value: str, title: str,
             group: str | None = None) -> Path | None:
    """Horizontal bars of ``row[value]`` labelled by ``row[label]`` (one panel per ``row[group]``);
    rows without a number in `value` are left out. None when matplotlib is missing or nothing to plot."""
    plt = pyplot()
    sel = [r for r in rows if isinstance(r.get(value), (int, float))]
    if plt is None or not sel:
        return None
    groups = list(dict.fromkeys(str(r.get(group, "")) for r in sel)) if group else [""]
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 1.2 + 0.35 * len(sel) + 0.6 * len(groups)), squeeze=False)
    for ax, g in zip(axes[:, 0], groups):
        part = [r for r in sel if not group or str(r.get(group, "")) == g]
        ax.barh([str(r[label])[:70] for r in part], [float(r[value]) for r in part])
        ax.invert_yaxis()
        ax.set_title(f"{title}{': ' + g if g else ''}", fontsize=9)
        units = sorted({str(r.get("unit", "")) for r in part} - {""})
        ax.set_xlabel(", ".join(units) or value, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
