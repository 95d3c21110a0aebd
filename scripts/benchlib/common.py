"""What every subcommand shares: timing loops, the machine's description, the figures' table and
the Subcommand record that bench.py's registry holds."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Figures = dict[str, Any]  # figure name -> number (or None when it could not be measured)


# --- shared helpers --------------------------------------------------------------------------
def rate(step: Callable[[], int], seconds: float) -> float:
    """Units per second: call ``step`` (which returns the units it did) until ``seconds`` pass."""
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += step()
    return done / elapsed


def timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def rss_mb() -> float:
    """This process's resident memory now (Linux), else its peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
    }


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, figures: Figures, notes: dict[str, str]) -> None:
    width = max(map(len, figures), default=0)
    values = {k: format_value(v) for k, v in figures.items()}
    vwidth = max(map(len, values.values()), default=0)
    print(title)
    for key, text in values.items():
        print(f"  {key:<{width}}  {text:>{vwidth}}  {notes.get(key, '')}".rstrip())


@dataclass(frozen=True)
class Subcommand:
    run: Callable[[argparse.Namespace], Figures]
    help: str
    notes: dict[str, str] = field(default_factory=dict)  # figure -> its unit and meaning
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
