"""Measuring helpers shared by the benchmarks: device names, best-of timings, interleaved rounds, peak memory."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    return f"{model} CPU, {torch.get_num_threads()} threads"


def peak_memory_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak of the memory allocated by torch during one call of ``fn`` (beyond what was allocated before)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - before
    # CPU: replay the profiler's allocation and free events in time order
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def best_time(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Best time of each run over ``repeats`` rounds of one call each, after a warm-up call (and compilation):
    interleaving makes machine noise hit every implementation alike."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], best_time(run, 1))
    return best


def write_json(path: Path, device: torch.device, rows: list[dict]) -> None:
    record = {"device": device_name(device), "torch": torch.__version__, "command": " ".join(sys.argv), "rows": rows}
    path.write_text(json.dumps(record, indent=1))
