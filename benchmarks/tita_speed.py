"""Whole-network time and peak memory, ours against the published algorithms, side by side in one run.

    python benchmarks/tita_speed.py --json benchmarks/results/tita_speed_cpu.json
    python benchmarks/tita_speed.py --device cuda --forward 256 512 1280x1024 --precision fp32 bf16 --json ...

Rows:
* forward: one gray pair of each size through the published network (TITA(), seeded random weights), inference
  mode, in each precision (bf16/fp16 under autocast);
* train step: ``Trainer.train_step`` itself in the published setting (3 tasks x batch 8 x 64x64 crops of the real
  pairs in ../shared/data, Adam, faithful FAMO with its extra forward after the step, EMA), two trainers from the
  same seed. ``--batch 4`` halves the batch: on a 24 GB machine the published algorithm's step at batch 8 is
  killed for memory (ours peaks at 16 GB resident there).

"published" runs the same code under :func:`tita_fast.baseline.published_ops` (the published IPA, OAF
and window attention with its per-call dense shift masks). Times are the best of ``--repeats`` interleaved rounds
after a warm-up; peak memory is torch's allocations during one more call (CUDA: max_memory_allocated; CPU: the
profiler's allocation events replayed), beyond what was allocated before it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from tita_fast.bench.measure import TABLE_HEADER, compare, device_name, format_row, parse_size, write_json
from tita_fast.bench.network import IMPLEMENTATIONS, forward_runs
from tita_fast.train.config import TrainConfig
from tita_fast.train.trainer import Trainer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TRAIN_TASKS = {  # the trainer's published tasks on the real pairs (the default model's recipe uses the same sets)
    "ivif": ("vif", ["ivif/roadscene_u2f", "ivif/llvip_gifnet"]),
    "mef": ("mef", ["mef/u2f_set1", "mef/gifnet"]),
    "mff": ("mff", ["mff/u2f", "mff/gifnet"]),
}


def train_runs(precision: str, device: torch.device, out_dir: Path, names=tuple(IMPLEMENTATIONS), batch: int = 8):
    tasks = {
        name: {"loss": loss, "sources": [{"task_path": str(DATA / s), "subdir1": "a", "subdir2": "b"} for s in sets]}
        for name, (loss, sets) in TRAIN_TASKS.items()
    }
    runs = {}
    for name in names:
        context = IMPLEMENTATIONS[name]
        config = TrainConfig.from_dict({"tasks": tasks, "out_dir": str(out_dir / name), "device": str(device),
                                        "precision": precision, "batch_size": batch, "cache_images": True,
                                        "progress": False})  # fmt: skip
        trainer = Trainer(config)

        def call(trainer=trainer, context=context):
            with context():
                trainer.train_step()
                trainer.step += 1
            if device.type == "cuda":
                torch.cuda.synchronize()

        runs[name] = call
    return runs


def measure(label: str, runs: dict, device: torch.device, repeats: int) -> dict:
    row = compare(label, runs, device, repeats)
    print(format_row(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--forward", nargs="*", default=["256", "512"], help="sizes: 256 or WIDTHxHEIGHT")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--no-train", dest="train", action="store_false", help="skip the training step")
    parser.add_argument("--batch", type=int, default=8, help="training batch per task (published: 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{device_name(device)}, torch {torch.__version__}")
    print(TABLE_HEADER)
    rows = []
    for precision in args.precision:
        for text in args.forward:
            size = parse_size(text, width_first=True)
            label = f"forward {size[1]}x{size[0]} {precision}"
            rows.append(measure(label, forward_runs(size, precision, device), device, args.repeats))
        if args.train:
            if not DATA.is_dir():
                raise SystemExit(f"the training step reads the real pairs in {DATA}, which is missing")
            with tempfile.TemporaryDirectory() as out_dir:
                runs = train_runs(precision, device, Path(out_dir), batch=args.batch)
                rows.append(measure(f"train step 3x{args.batch}x64^2 {precision}", runs, device, args.repeats))
    if args.json:
        write_json(args.json, device, rows)


if __name__ == "__main__":
    main()
