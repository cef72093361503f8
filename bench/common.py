"""Plumbing of the scripts in bench/ (the benchmarks `binllm bench` does not run): the
timing rule, the machine facts and the table writers of :mod:`binllm.bench`, writing
under bench/results/ (or wherever RESULTS is pointed)."""
from __future__ import annotations

from pathlib import Path

from binllm.bench import machine, report
from binllm.bench.report import timeit

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS", "environment", "timeit", "write_table"]


def environment() -> dict[str, object]:
    """The machine facts (without the measured limits: these scripts bring their own)."""
    return machine.facts()


def write_table(name: str, rows: list[dict], columns: list[str], env: dict, notes: str = "") -> Path:
    """Writes RESULTS/<name>.md (notes, table, machine facts) and <name>.csv atomically."""
    return report.write_table(RESULTS, name, rows, columns, env, notes)
