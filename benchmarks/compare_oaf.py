"""Prints OAF timings, speed-ups and peak memory as a table, every implementation measured in the same run.

    python benchmarks/compare_oaf.py --sizes 256,512 --device cpu --repeats 5 [--json results.json]

Scopes and layouts are described in ``tita_fast/bench/oaf_cases.py``. Runs are interleaved (one run of each
implementation per round) so machine noise affects all alike; the table reports the best round. Ratios are
published / implementation and reference / implementation; memory ratios published peak / implementation peak.
On CUDA, ``bandwidth floor`` is the bytes the op must move (inputs read once, outputs written once) over the
device's measured copy bandwidth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tita_fast.bench.measure import device_name, interleaved_best, parse_size, peak_memory_bytes, write_json
from tita_fast.bench.oaf_cases import CHANNELS, LAYOUTS, Case, implementations, step


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (bytes read + written), best of 10."""
    src = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * src.numel() / best


def op_bytes(height: int, width: int, backward: bool, element: int = 4) -> int:
    """Bytes the mixing op must move at least. Forward reads x, y, residuals, multipliers (6 C-maps) and two
    9-tap logit maps, writes the output; backward also reads the output gradient and writes 6 C-map and two
    logit-map gradients."""
    pixels = height * width
    forward = (7 * CHANNELS + 18) * pixels
    backward_only = (7 * CHANNELS + 18 + 6 * CHANNELS + 18) * pixels
    return element * (forward + (backward_only if backward else 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512", help="comma-separated, each N or HxW")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scopes", default="op,step")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    names = implementations(device)
    rows = []
    for size in args.sizes.split(","):
        height, width = parse_size(size)
        for scope in args.scopes.split(","):
            for layout in args.layouts.split(","):
                case = Case((height, width), device, layout)
                for backward in (False, True):
                    runs = {name: step(case, scope, name, backward) for name in names}
                    best = interleaved_best(runs, args.repeats)
                    peaks = {name: peak_memory_bytes(runs[name], device) for name in names}
                    for name in names:
                        row = {
                            "size": f"{height}x{width}", "scope": scope, "layout": layout,
                            "pass": "forward+backward" if backward else "forward", "implementation": name,
                            "best_ms": best[name] * 1e3,
                            "speedup_vs_published": best["published"] / best[name],
                            "speedup_vs_reference": best["reference"] / best[name],
                            "peak_memory_mb": peaks[name] / 2**20,
                            "memory_ratio_vs_published": peaks["published"] / max(peaks[name], 1),
                        }  # fmt: skip
                        if bandwidth and scope == "op":
                            row["bandwidth_floor_ms"] = op_bytes(height, width, backward) / bandwidth * 1e3
                        rows.append(row)
    print(f"OAF, N=1, C={CHANNELS}, float32 on {device_name(device)}, torch {torch.__version__}")
    if bandwidth:
        print(f"measured copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print(f"{'size':>9} {'scope':<5} {'layout':<13} {'pass':<17} {'implementation':<10} {'best ms':>9} "
          f"{'vs publ.':>9} {'vs ref.':>8} {'peak MB':>9} {'mem ratio':>9} {'floor ms':>9}")  # fmt: skip
    for r in rows:
        floor = f"{r['bandwidth_floor_ms']:>9.3f}" if "bandwidth_floor_ms" in r else f"{'':>9}"
        print(f"{r['size']:>9} {r['scope']:<5} {r['layout']:<13} {r['pass']:<17} {r['implementation']:<10} "
              f"{r['best_ms']:>9.2f} {r['speedup_vs_published']:>8.2f}x {r['speedup_vs_reference']:>7.2f}x "
              f"{r['peak_memory_mb']:>9.1f} {r['memory_ratio_vs_published']:>8.2f}x {floor}")  # fmt: skip
    if args.json:
        write_json(args.json, device, rows)


if __name__ == "__main__":
    main()
