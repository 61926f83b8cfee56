"""Fuse one large gray pair with the default model and report time and peak memory against the whole-image need.

    OMP_NUM_THREADS=1 python benchmarks/fuse_large.py --size 4096 --json benchmarks/results/fuse_4096_cpu.json

The pair is matplotlib's sample photo resized to SIZE x SIZE, over- and under-exposed. The whole-image pass would
need about ``fuse.bytes_per_pixel`` bytes per pixel; tita_fast tiles when that exceeds half the free memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tita_fast import fuse
from tita_fast.demo import sample_photo
from tita_fast.train.synthetic import multiexposure_pair

GIB = 1 << 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        photo = sample_photo().convert("L").resize((args.size, args.size), Image.Resampling.LANCZOS)
        for side, image in zip("ab", multiexposure_pair(photo, np.random.default_rng(0)), strict=True):
            (folder / side).mkdir()
            image.save(folder / side / "large.png")
        model = fuse.load_model(device="cpu")
        tile = fuse.auto_tile_size(model, (args.size, args.size))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.perf_counter()
        job = fuse.FuseJob.plan(folder / "a", folder / "b", folder / "out")
        job.run(progress=False)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "command": " ".join(["python", *sys.argv]),
        "size": args.size,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak / GIB, 2),
        "rss_before_fusing_gib": round(before / GIB, 2),
        "whole_image_estimate_gib": round(args.size**2 * fuse.bytes_per_pixel(model) / GIB, 1),
        "available_memory_gib": round(fuse.available_memory(torch.device("cpu")) / GIB, 1),
        "auto_tile": tile,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
