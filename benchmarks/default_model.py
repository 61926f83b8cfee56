"""The default model: export it from a training run, and compare it with simple baselines on ../shared/data.

    python benchmarks/default_model.py export runs/default_model     # EMA weights -> src/tita_fast/weights/
    python benchmarks/default_model.py table --json benchmarks/results/default_model_baselines.json

``table`` fuses every pair of every set in ../shared/data with the model (default: the shipped one) and with two
baselines on luminance — pixel averaging (A + B) / 2 and per-pixel max-abs selection (the source value of larger
magnitude; on 0-255 images the maximum) — and prints Qabf and VIF (tita_fast.metrics) per set and per task. The
fused luminance is rounded to 8 bits, as written files are, for all three.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from tita_fast import fuse
from tita_fast.color import luminance_and_chroma
from tita_fast.imageio import match_images, read_image
from tita_fast.metrics import evaluate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METRICS = ("Qabf", "VIF")


def export(run: Path) -> None:
    source = run / "checkpoints" / "latest"
    if not source.exists():
        sys.exit(f"{source} not found: is {run} a tita-fast train run directory?")
    checkpoint = run / "checkpoints" / source.read_text().strip() if source.is_file() else source.resolve()
    fuse.TITA.from_checkpoint(checkpoint / "ema.safetensors")  # refuse anything that does not load
    shutil.copyfile(checkpoint / "ema.safetensors", fuse.DEFAULT_WEIGHTS)
    print(f"copied {checkpoint / 'ema.safetensors'} -> {fuse.DEFAULT_WEIGHTS}")


def table(checkpoint: str | None, json_path: str | None, tasks: list[str] | None = None) -> None:
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: the comparison runs on the pairs of ../shared/data")
    model = fuse.load_model(checkpoint, "cpu")
    rows = []
    for set_dir in sorted(p for p in DATA.glob("*/*") if p.is_dir() and (not tasks or p.parent.name in tasks)):
        scores = {name: {m: 0.0 for m in METRICS} for name in ("model", "average", "max-abs")}
        pairs = match_images(set_dir / "a", set_dir / "b")
        started = time.perf_counter()
        for _, (path_a, path_b) in pairs:
            a, b = (luminance_and_chroma(read_image(p)[0][None])[0] for p in (path_a, path_b))
            fused = {
                "model": fuse.fuse_luminance(model, a / 255, b / 255) * 255,
                "average": (a + b) / 2,
                "max-abs": torch.where(a.abs() >= b.abs(), a, b),
            }
            for name, image in fused.items():
                for metric, value in evaluate(a, b, image.round().clamp(0, 255), METRICS).items():
                    scores[name][metric] += value / len(pairs)
        task, name = set_dir.parent.name, set_dir.name
        rows.append({"task": task, "set": name, "pairs": len(pairs), **scores})
        print(f"{task}/{name}: {len(pairs)} pairs, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(markdown(rows))
    if json_path:
        meta = {"command": " ".join(sys.argv), "checkpoint": checkpoint or str(fuse.DEFAULT_WEIGHTS),
                "torch": torch.__version__, "machine": platform.processor() or platform.machine()}  # fmt: skip
        Path(json_path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


def markdown(rows: list[dict]) -> str:
    head = "| task | set | pairs | " + " | ".join(f"{m} {n}" for m in METRICS for n in ("TITA", "avg", "max")) + " |"
    lines = [head, "|" + "---|" * (3 + 3 * len(METRICS))]
    for row in rows:
        cells = []
        for m in METRICS:
            best = max(row[n][m] for n in ("model", "average", "max-abs"))
            for n in ("model", "average", "max-abs"):
                value = f"{row[n][m]:.3f}"
                cells.append(f"**{value}**" if row[n][m] == best else value)
        lines.append(f"| {row['task']} | {row['set']} | {row['pairs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export")
    exporter.add_argument("run", type=Path)
    scorer = commands.add_parser("table")
    scorer.add_argument("--checkpoint", help="model file (default: the shipped default model)")
    scorer.add_argument("--json", help="write the rows and the command here")
    scorer.add_argument("--tasks", help="comma-separated subset of the task folders (default: all)")
    args = parser.parse_args()
    if args.command == "export":
        export(args.run)
    else:
        table(args.checkpoint, args.json, args.tasks.split(",") if args.tasks else None)


if __name__ == "__main__":
    main()
