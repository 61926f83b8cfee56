"""What bf16/fp16 autocast costs in quality: PSNR of the fused luminance against the fp32 result, per pair of
../shared/data, with the default model (or ``--checkpoint``), and each precision's time.

    python benchmarks/precision_quality.py --json benchmarks/results/precision_quality_cpu.json

PSNR over [0, 1] images (peak 1), before rounding to 8 bits: 10 log10(1 / MSE).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from tita_fast import fuse
from tita_fast.bench.measure import write_json
from tita_fast.color import luminance_and_chroma
from tita_fast.imageio import match_images, read_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = (image.double() - reference.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="model file (default: the shipped default model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: the comparison runs on the pairs of ../shared/data")
    device = torch.device(args.device)
    model = fuse.load_model(args.checkpoint, device)
    rows = []
    for set_dir in sorted(p for p in DATA.glob("*/*") if p.is_dir()):
        for stem, (path_a, path_b) in match_images(set_dir / "a", set_dir / "b"):
            a, b = (luminance_and_chroma(read_image(p)[0][None])[0].to(device) / 255 for p in (path_a, path_b))
            row = {"pair": f"{set_dir.parent.name}/{set_dir.name}/{stem}", "size": list(a.shape[-2:])}
            reference = None
            for precision in ["fp32", *args.precision]:
                start = time.perf_counter()
                fused = fuse.fuse_luminance(model, a, b, precision=precision)
                row[f"{precision}_s"] = time.perf_counter() - start
                if reference is None:
                    reference = fused
                else:
                    row[f"{precision}_psnr_db"] = psnr(fused, reference)
            rows.append(row)
            cells = "  ".join(f"{p} {row[f'{p}_psnr_db']:6.2f} dB" for p in args.precision)
            print(f"{row['pair']:<36} {cells}", flush=True)
    for precision in args.precision:
        values = [r[f"{precision}_psnr_db"] for r in rows]
        print(f"{precision}: min {min(values):.2f} dB, mean {sum(values) / len(values):.2f} dB over {len(rows)} pairs")
    if args.json:
        write_json(args.json, device, rows)


if __name__ == "__main__":
    main()
