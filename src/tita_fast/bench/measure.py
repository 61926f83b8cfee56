"""Measuring helpers shared by the benchmarks: device names, best-of timings, interleaved rounds, peak memory, and
the side-by-side rows (published against ours) of ``tita-fast bench`` and ``benchmarks/tita_speed.py``."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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


def parse_size(text: str, width_first: bool = False) -> tuple[int, int]:
    """(height, width) of ``"256"`` (square) or ``"HEIGHTxWIDTH"``; of ``"WIDTHxHEIGHT"`` with ``width_first``
    (the images' convention: ``"1280x1024"`` is 1024 rows)."""
    first, _, second = text.partition("x")
    first, second = int(first), int(second or first)
    return (second, first) if width_first else (first, second)


@contextlib.contextmanager
def _without_profiler_log() -> Iterator[None]:
    """Torch's profiler (kineto) writes lines to the stderr file descriptor as it starts and stops: drop those,
    pass on anything else written there meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not line.startswith(("USDT:", "STAGE:"))))


def peak_memory_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak of the memory allocated by torch during one call of ``fn`` (beyond what was allocated before)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        return torch.cuda.max_memory_allocated(device) - before
    # CPU: replay the profiler's allocation and free events in time order
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with _without_profiler_log():
        profiler.start()
    try:
        fn()
    finally:
        with _without_profiler_log():
            profiler.stop()
    running = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
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


def compare(case: str, runs: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict:
    """One row of ``runs`` {"published": ..., "ours": ...}: best interleaved times (s), peak memory (bytes),
    ``speedup`` = published time / ours and ``memory_ratio`` = ours peak / published peak."""
    best = interleaved_best(runs, repeats)
    peaks = {name: peak_memory_bytes(run, device) for name, run in runs.items()}
    row = {"case": case, **{f"{n}_s": best[n] for n in runs}, **{f"{n}_peak_bytes": peaks[n] for n in runs}}
    row["speedup"] = best["published"] / best["ours"]
    row["memory_ratio"] = peaks["ours"] / peaks["published"] if peaks["published"] else float("nan")
    return row


TABLE_HEADER = (
    f"{'case':<36} {'published ms':>12} {'ours ms':>12} {'speed-up':>9} {'published MiB':>13} {'ours MiB':>10} "
    f"{'mem ratio':>9}"
)


def format_row(row: dict) -> str:
    """A :func:`compare` row as a line under :data:`TABLE_HEADER`."""
    return (
        f"{row['case']:<36} {row['published_s'] * 1e3:12.2f} {row['ours_s'] * 1e3:12.2f} {row['speedup']:8.2f}x "
        f"{row['published_peak_bytes'] / 2**20:13.1f} {row['ours_peak_bytes'] / 2**20:10.1f} {row['memory_ratio']:9.2f}"
    )


def write_json(
    path: Path, device: torch.device, rows: list[dict], command: str | None = None, fields: dict | None = None
) -> None:
    """``{"device", "torch", "command", "rows"}`` and any other ``fields``; the command defaults to this process's
    command line."""
    record = {"device": device_name(device), "torch": torch.__version__, **(fields or {}),
              "command": command or " ".join(sys.argv), "rows": rows}  # fmt: skip
    path.write_text(json.dumps(record, indent=1))
