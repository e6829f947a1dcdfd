"""The timing loop the training benchmarks share (train_throughput.py, data_pipeline.py, cpu_processes.py, ...):
interleaved rounds.

Each round times every candidate once, in turn, so machine noise hits all of them alike; the JSON is rewritten
after every round, so a run stopped by its budget or a timeout still reports what it measured.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch


def timed_rounds(names: Iterable[str], measure: Callable[[str], float], times: dict[str, list[float]], *,
                 rounds: int, batch: int, write: Callable[..., object], budget_s: float, start: float,
                 width: int = 40) -> int:
    """``rounds`` rounds of ``measure(name)`` (seconds per step) for every name, appended to ``times[name]`` and
    printed as img/s at ``batch`` images per step; ``write(rounds_done, complete=False)`` after each round. Stops
    early when another round would end past ``budget_s`` seconds after ``start`` (0: no budget). Returns the
    number of rounds done."""
    names = list(names)
    rounds_done = 0
    for r in range(rounds):
        round_t0 = time.perf_counter()
        for name in names:
            times[name].append(measure(name))
            print(f"round {r}: {name:<{width}} {batch / times[name][-1]:10.2f} img/s", file=sys.stderr)
        rounds_done = r + 1
        write(rounds_done, complete=False)
        now = time.perf_counter()
        if budget_s and now - start + (now - round_t0) > budget_s and r + 1 < rounds:
            print(f"budget: stopping after {rounds_done} of {rounds} rounds", file=sys.stderr)
            break
    return rounds_done


def rates(times: dict[str, list[float]], batch: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each candidate's img/s in every round (from seconds per step at ``batch`` images) and their median, to 0.1."""
    img_s = {n: [round(batch / t, 1) for t in ts] for n, ts in times.items()}
    return img_s, {n: round(statistics.median(v), 1) for n, v in img_s.items() if v}


def interleaved_ms(ways: dict[str, Callable[[], object]], iters: int, warmup: int = 0) -> dict[str, float]:
    """Each way's median milliseconds over ``iters`` repetitions, the ways taking turns (after ``warmup`` untimed
    turns), so machine noise hits them alike."""
    for _ in range(warmup):
        for fn in ways.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(iters):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def cpu_record(load_before: tuple[float, float, float]) -> dict:
    """Where a CPU measurement ran: torch, the machine and its kernels' instruction set, the load averages before
    (``load_before``, from ``os.getloadavg()`` at the start) and now, and the UTC date."""
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save(out: Path | None, result: dict) -> dict:
    """``result`` written as JSON at ``out`` (its folder made), if given; returned either way."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
