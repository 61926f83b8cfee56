"""Prints IPA timings, speed-ups and peak memory as a table, every implementation measured in the same run.

    python benchmarks/compare_ipa.py --sizes 128,256,512 --device cpu --repeats 5 [--json results.json]

Runs are interleaved (one run of each implementation per round) so machine noise affects all alike; the
table reports the best round. Ratios are published / implementation and reference / implementation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tita_fast.bench.ipa_cases import implementations, make_case, step
from tita_fast.bench.measure import device_name, interleaved_best, peak_memory_bytes, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = implementations(device)
    rows = []
    for size in map(int, args.sizes.split(",")):
        for backward in (False, True):
            module, a, b = make_case(size, device)
            runs = {name: step(module, a, b, name, backward) for name in names}
            best = interleaved_best(runs, args.repeats)
            for name in names:
                rows.append({
                    "size": size, "pass": "forward+backward" if backward else "forward", "implementation": name,
                    "best_ms": best[name] * 1e3,
                    "speedup_vs_published": best["published"] / best[name],
                    "speedup_vs_reference": best["reference"] / best[name],
                    "peak_memory_mb": peak_memory_bytes(runs[name], device) / 2**20,
                })  # fmt: skip
    header = f"{'size':>6} {'pass':<17} {'implementation':<19} {'best ms':>9} {'vs published':>13} " \
             f"{'vs reference':>13} {'peak MB':>9}"  # fmt: skip
    print(f"IPA, N=1, C=60, 6 heads, float32 on {device_name(device)}, torch {torch.__version__}")
    print(header)
    for r in rows:
        ratios = f"{r['speedup_vs_published']:>12.2f}x {r['speedup_vs_reference']:>12.2f}x"
        print(f"{r['size']:>6} {r['pass']:<17} {r['implementation']:<19} {r['best_ms']:>9.2f} {ratios} "
              f"{r['peak_memory_mb']:>9.1f}")  # fmt: skip
    if args.json:
        write_json(args.json, device, rows)


if __name__ == "__main__":
    main()
