"""FAMO's faithful update (a second forward after every step) against the fast one (the next step's losses).

Trains the same configuration twice from the same seed, once per mode, and reports the time per step and the
task losses of each final model (and its EMA) on the same held-out crops (another seed's batches, eval mode)::

    python benchmarks/famo_modes.py --config examples/train_shared_data.yaml --iterations 500 \\
        --json benchmarks/results/famo_modes_cpu.json --keep runs/famo_modes
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import tempfile
from pathlib import Path

import torch

from tita_fast.bench.measure import device_name, write_json
from tita_fast.train import TaskBatches, TaskPairs, Trainer, load_config

EVAL_SEED_OFFSET = 1000  # held-out crops: batches of another seed than training's


@torch.no_grad()
def evaluate(trainer: Trainer, module: torch.nn.Module, batches: int) -> dict[str, float]:
    """Mean task losses of ``module`` over ``batches`` held-out batches per task."""
    config = trainer.config
    module.eval()
    totals = dict.fromkeys(trainer.task_names, 0.0)
    for name, task, loss in zip(trainer.task_names, config.tasks.values(), trainer.losses, strict=True):
        held_out = TaskBatches(TaskPairs(name, task.sources, min_size=config.crop_size), config.batch_size,
                               config.crop_size, seed=config.seed + EVAL_SEED_OFFSET)  # fmt: skip
        for step in range(batches):
            A, B = (t.to(trainer.device) for t in held_out.batch(step))
            totals[name] += loss(A, B, module(A, B)).item() / batches
    return totals


def run(config_path: str, mode: str, overrides: list[str], eval_batches: int, keep: str | None) -> dict:
    with contextlib.nullcontext(f"{keep}/{mode}") if keep else tempfile.TemporaryDirectory() as out:
        settings = [f"famo_update={mode}", f"out_dir={out}", "progress=false", "log_every=1"]
        config = load_config(config_path, [*overrides, *settings])
        config.checkpoint_every = config.iterations  # one checkpoint, at the end
        trainer = Trainer(config)
        last = trainer.fit()
        # Time per step from the log's clock, after a warm-up (first allocations, first image decodes).
        with open(Path(out) / "log.csv") as f:
            clock = {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(f)}
        warmup = min(10, trainer.step // 5)
        seconds_per_step = (clock[trainer.step] - clock.get(warmup, 0.0)) / (trainer.step - warmup)
        return {
            "device": device_name(trainer.device),
            "torch_device": str(trainer.device),
            "famo_update": mode,
            "steps": trainer.step,
            "warmup_steps": warmup,
            "seconds_per_step": seconds_per_step,
            "last_step_losses": last,
            "famo_weights": dict(zip(trainer.task_names, trainer.famo.weights.tolist(), strict=True)),
            "held_out_losses_model": evaluate(trainer, trainer.model, eval_batches),
            "held_out_losses_ema": evaluate(trainer, trainer.ema, eval_batches),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", metavar="DIR", help="keep each run (log.csv, curves.png, checkpoint) in DIR/<mode>")
    args = parser.parse_args()
    overrides = [*args.set, f"iterations={args.iterations}"]
    rows = [run(args.config, mode, overrides, args.eval_batches, args.keep) for mode in ("faithful", "fast")]
    faithful, fast = rows
    print(f"device: {faithful['device']}, {args.iterations} steps of {args.config}")
    for row in rows:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in row["held_out_losses_model"].items())
        print(f"{row['famo_update']:>9}: {row['seconds_per_step'] * 1000:.0f} ms/step; held-out losses {losses}")
    print(f"fast / faithful step time: {fast['seconds_per_step'] / faithful['seconds_per_step']:.3f}")
    if args.json:
        write_json(Path(args.json), torch.device(faithful["torch_device"]), rows)


if __name__ == "__main__":
    main()
