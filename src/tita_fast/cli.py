"""The ``tita-fast`` command line."""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from pathlib import Path

import torch

import tita_fast
from tita_fast import _extension


def info(args: argparse.Namespace) -> int:
    """Print what a bug report needs: versions, devices, backends."""
    if torch.cuda.is_available():
        devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        devices = "none"
    print(f"tita_fast {tita_fast.__version__}")
    print(f"python    {platform.python_version()} ({sys.executable})")
    print(f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'not built'})")
    print(f"cpu       {platform.machine()}, {torch.get_num_threads()} threads")
    print(f"gpu       {devices}")
    print(f"backends  available: {', '.join(tita_fast.available_backends())}; selected: {tita_fast.selected_backend()}")
    if _extension.LOAD_ERROR is not None:
        print(f"kernels   compiled ops not loaded ({_extension.LOAD_ERROR}); reinstall with "
              "`pip install --no-build-isolation .`")  # fmt: skip
    return 0


def train(args: argparse.Namespace) -> int:
    """Train TITA with FAMO (see ``tita_fast.train``); errors in the configuration or data exit with a message."""
    from tita_fast.train.config import TrainConfig, load_config
    from tita_fast.train.trainer import Trainer, checkpoint_config, find_checkpoint

    overrides = list(args.set or [])
    flags = {"out_dir": args.out, "device": args.device, "iterations": args.iterations,
             "precision": args.precision, "backend": args.backend, "famo_update": args.famo_update}  # fmt: skip
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    try:
        if args.config is not None:
            config = load_config(args.config, overrides)
            resume = args.resume
        elif args.resume is not None:
            resume = find_checkpoint(args.resume if args.resume is not True else args.out)
            config = TrainConfig.from_dict(checkpoint_config(resume, overrides))
        else:
            raise ValueError("give --config FILE, or --resume CHECKPOINT_DIR (or --resume --out RUN_DIR)")
        trainer = Trainer(config, resume=resume, overrides=overrides)
        losses = trainer.fit()
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"tita-fast train: error: {err}", file=sys.stderr)
        return 2
    if trainer.rank == 0:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
        print(f"trained to step {trainer.step} in {config.out_dir} (last losses: {shown})")
    return 0


def synth(args: argparse.Namespace) -> int:
    """Make synthetic multi-focus or multi-exposure pairs from a folder of photos."""
    from tita_fast.train.synthetic import make_pairs

    try:
        stems = make_pairs(args.kind, args.photos, args.out, seed=args.seed, size=args.size, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"tita-fast synth: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(stems)} {args.kind} pairs to {args.out}/a and {args.out}/b")
    return 0


def fuse(args: argparse.Namespace) -> int:
    """Fuse two images, or two folders of images matched by name, into OUT."""
    from tita_fast.fuse import FuseJob

    try:
        job = FuseJob.plan(args.a, args.b, args.output, args.format, args.overwrite, args.pipeline)
        job.run(args.checkpoint, args.device, args.backend, args.precision, args.batch, args.tile, args.overlap)
    except (ValueError, RuntimeError) as err:
        print(f"tita-fast fuse: error: {err}", file=sys.stderr)
        return 2
    return 0 if not job.failures else 1


# The columns of ``eval --table``: the metrics fusion papers report, in their usual order.
TABLE_METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def evaluate(args: argparse.Namespace) -> int:
    """Fusion metrics of fused images against their sources: a table, JSON or CSV, or with --table the mean of
    each A B FUSED triple as one row of a paper's table."""
    from tita_fast.metrics import evaluate_files

    paths = [args.a, args.b, args.fused, *args.more]
    triples = [paths[i : i + 3] for i in range(0, len(paths), 3)]
    metrics = args.metrics.split(",") if args.metrics else TABLE_METRICS if args.table else None
    try:
        if len(paths) % 3:
            raise ValueError(f"give the images as triples A B FUSED, got {len(paths)} paths")
        if len(triples) > 1 and not args.table:
            raise ValueError("several A B FUSED triples need --table (one row each)")
        sets = {_set_label(fused): evaluate_files(a, b, fused, metrics, args.convention) for a, b, fused in triples}
        if len(sets) < len(triples):
            raise ValueError("the FUSED folders of the triples need distinct names (they label the rows)")
        rows = [{**row, "name": f"{label}/{row['name']}" if args.table else row["name"]}
                for label, set_rows in sets.items() for row in set_rows]  # fmt: skip
        if args.csv:
            write_csv(args.csv, rows)
    except (ValueError, OSError) as err:
        print(f"tita-fast eval: error: {err}", file=sys.stderr)
        return 2
    if args.table:
        print(format_paper_table(sets))
    elif args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
    return 0


def _set_label(path: str) -> str:
    """A table row's label: the FUSED folder's name (a file's stem)."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


def format_paper_table(sets: dict[str, list[dict]]) -> str:
    """A Markdown table in the layout of papers: one row per data set (the mean over its images), one column per
    metric, two decimals."""
    names = [k for k in next(iter(sets.values()))[0] if k != "name"]
    lines = ["| data set | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, rows in sets.items():
        means = [sum(r[k] for r in rows) / len(rows) for k in names]
        lines.append(f"| {label} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    return "\n".join(lines)


def format_table(rows: list[dict], mean: bool = True) -> str:
    """Rows of {"name": ..., metric: value} as an aligned table, with the mean of each metric when several."""
    names = [k for k in rows[0] if k != "name"]
    if mean and len(rows) > 1:
        rows = [*rows, {"name": "mean", **{k: sum(r[k] for r in rows) / len(rows) for k in names}}]
    width = max(4, *(len(r["name"]) for r in rows))
    lines = [f"{'name':<{width}}" + "".join(f"{k:>10}" for k in names)]
    lines += [f"{r['name']:<{width}}" + "".join(f"{r[k]:>10.4f}" for k in names) for r in rows]
    return "\n".join(lines)


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def demo(args: argparse.Namespace) -> int:
    """Fuse demo pairs made from a sample photo; side-by-side PNGs and metrics in OUT."""
    from tita_fast import demo as demo_module

    try:
        scores = demo_module.run(args.output, args.checkpoint, args.device, args.overwrite)
    except (ValueError, RuntimeError) as err:
        print(f"tita-fast demo: error: {err}", file=sys.stderr)
        return 2
    for kind, rows in scores.items():
        print(f"{kind}:")
        print(format_table([{"name": name, **values} for name, values in rows.items()], mean=False))
    print(f"wrote {', '.join(f'{args.output}/{kind}.png' for kind in scores)} and {args.output}/metrics.json")
    return 0


def bench(args: argparse.Namespace) -> int:
    """Time and peak memory of our ops and the whole network against the published algorithms, side by side."""
    from tita_fast.bench import headline
    from tita_fast.devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"tita-fast bench: error: {err}", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the cases synchronise the current device
    defaults = headline.DEFAULTS[device.type]
    settings = headline.Settings(args.size or defaults.op_size, args.network_size or defaults.network_size,
                                 args.repeats or defaults.repeats)  # fmt: skip
    try:
        headline.run(device, settings, args.json)
    except torch.cuda.OutOfMemoryError as err:
        print(f"tita-fast bench: error: {err}\nsmaller --size or --network-size may fit", file=sys.stderr)
        return 1
    return 0


def _at_least(minimum: int, unit: str = ""):
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected at least {minimum}{unit}, got {value}")
        return value

    return parse


def _image_size(text: str) -> tuple[int, int]:
    """An argparse type: ``N`` or ``WIDTHxHEIGHT`` -> (height, width), sides of at least 8 pixels."""
    sides = text.split("x")
    if len(sides) > 2:
        raise argparse.ArgumentTypeError(f"expected N or WIDTHxHEIGHT, got {text!r}")
    width, height = (_at_least(8, " pixels")(side) for side in (sides[0], sides[-1]))
    return height, width


def main(argv: list[str] | None = None) -> int:
    from tita_fast.fuse import PIPELINES
    from tita_fast.metrics import CONVENTIONS

    parser = argparse.ArgumentParser(prog="tita-fast", description="Fast, exact TITA image fusion.")
    parser.add_argument("--version", action="version", version=f"tita_fast {tita_fast.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, devices and backends").set_defaults(run=info)

    trainer = commands.add_parser("train", help="train TITA with FAMO on paired images",
                                  description="Train TITA (three tasks per step, FAMO task weighting).")  # fmt: skip
    trainer.add_argument("--config", help="YAML or JSON configuration (or the published config.json)")
    trainer.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="CHECKPOINT_DIR",
        help="continue exactly from a checkpoint directory, or the latest one in the run's out_dir",
    )
    trainer.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a configuration key")
    trainer.add_argument("--out", help="run directory (out_dir)")
    trainer.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: auto)")
    trainer.add_argument("--iterations", type=int, help="train up to this step")
    trainer.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    trainer.add_argument("--backend", help="fused-op backend (auto, reference, cpu, cuda, triton)")
    trainer.add_argument(
        "--famo-update",
        choices=("faithful", "fast"),
        help="FAMO logits from a second forward after the step (faithful) or the next step's losses",
    )
    trainer.set_defaults(run=train)

    maker = commands.add_parser("synth", help="make synthetic multi-focus / multi-exposure pairs from photos")
    maker.add_argument("kind", choices=("mff", "mef"), help="mff: complementary focus; mef: over/under exposure")
    maker.add_argument("photos", help="folder of ordinary photos")
    maker.add_argument("out", help="output folder (pairs in OUT/a and OUT/b)")
    maker.add_argument("--seed", type=int, default=0)
    maker.add_argument("--size", type=int, help="resize so the shorter side is SIZE")
    maker.add_argument("--overwrite", action="store_true", help="allow a non-empty output folder")
    maker.set_defaults(run=synth)
    fuser = commands.add_parser("fuse", help="fuse two images, or two folders of images matched by name",
                                description="Fuse registered image pairs with TITA (the default model unless "
                                "--checkpoint). Colour when either source is; 16-bit gray stays 16-bit.")  # fmt: skip
    fuser.add_argument("a", help="first source: an image file or a folder of images")
    fuser.add_argument("b", help="second source: an image file or a folder (files matched to A's by name)")
    fuser.add_argument("-o", "--output", required=True,
                       help="output folder (results: <name>.<format>), or an image file for a single pair")  # fmt: skip
    fuser.add_argument("--checkpoint", help="model file (.safetensors from tita-fast train, or a published .pth)")
    fuser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    fuser.add_argument("--backend", default="auto", help="fused-op backend (auto, reference, cpu, cuda, triton)")
    fuser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    fuser.add_argument("--batch", type=int, default=1, help="fuse up to this many same-size pairs at once")
    fuser.add_argument("--tile", type=int, help="force tiles of this side (default: only when memory is short)")
    fuser.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles in pixels")
    fuser.add_argument("--format", default="png", choices=("png", "tif", "bmp", "jpg"), help="output format")
    fuser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    fuser.add_argument("--pipeline", choices=PIPELINES, default="tita_fast",
                       help="tita_fast (default): ours; published: the published test script's pre- and "
                       "post-processing, to reproduce papers' images (8-bit images only; docs/fusing.md)")  # fmt: skip
    fuser.set_defaults(run=fuse)
    scorer = commands.add_parser("eval", help="fusion metrics of fused images against their sources",
                                 description="EN SD SF AG MI SCD VIF Qabf SSIM PSNR CC Nabf on 0-255 luminance "
                                 "(conventions: tita_fast.metrics). A, B and FUSED: three files, or three folders "
                                 "matched by file name (stem).")  # fmt: skip
    scorer.add_argument("a", help="first source (file or folder)")
    scorer.add_argument("b", help="second source (file or folder)")
    scorer.add_argument("fused", help="fused image (file or folder)")
    scorer.add_argument("more", nargs="*", metavar="A B FUSED", help="more triples (with --table: one row each)")
    scorer.add_argument("--metrics", help="comma-separated subset, e.g. Qabf,VIF (default: all)")
    scorer.add_argument("--convention", choices=CONVENTIONS, default="tita_fast",
                        help="tita_fast (default): ours; cddfuse: the numbers of the CDDFuse evaluator that most "
                        "papers use (docs/metrics.md)")  # fmt: skip
    output = scorer.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    output.add_argument("--table", action="store_true",
                        help="print a Markdown table in papers' layout: one row per triple (the mean; labelled by "
                        f"the FUSED folder's name), columns {' '.join(TABLE_METRICS)} unless --metrics")  # fmt: skip
    scorer.add_argument("--csv", metavar="FILE", help="also write the rows to a CSV file")
    scorer.set_defaults(run=evaluate)
    shower = commands.add_parser("demo", help="fuse demo pairs made from a sample photo (no data needed)",
                                 description="Make a multi-focus and a multi-exposure pair from a photo that "
                                 "matplotlib ships, fuse them and write side-by-side PNGs and metrics.")  # fmt: skip
    shower.add_argument("-o", "--output", default="tita_demo", help="output folder (default: tita_demo)")
    shower.add_argument("--checkpoint", help="model file (default: the model shipped in the package)")
    shower.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    shower.add_argument("--overwrite", action="store_true", help="replace earlier demo output")
    shower.set_defaults(run=demo)
    from tita_fast.bench.headline import DEFAULTS, size_text

    cpu, cuda = DEFAULTS["cpu"], DEFAULTS["cuda"]
    bencher = commands.add_parser(
        "bench",
        help="time and peak memory of our ops and the network against the published algorithms",
        description="Measure the published algorithms and ours (the selected backend, auto by default) side by "
        "side in one run: IPA, the OAF mixing op and the OAF module (N=1, C=60, SIZExSIZE), forward and "
        "forward+backward, and the TITA forward (published configuration, seeded random weights, one gray pair), "
        "float32. Prints best times, speed-ups and peak memory; the CPU defaults take about a minute on 2 cores.",
    )
    bencher.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    bencher.add_argument("--size", type=_at_least(8, " pixels"),
                         help=f"side of the IPA and OAF inputs (default: {cpu.op_size} on CPU, {cuda.op_size} on "
                         "CUDA)")  # fmt: skip
    bencher.add_argument("--network-size", type=_image_size, metavar="N|WIDTHxHEIGHT",
                         help=f"the network's pair (default: {size_text(cpu.network_size)} on CPU, "
                         f"{size_text(cuda.network_size)} on CUDA)")  # fmt: skip
    bencher.add_argument("--repeats", type=_at_least(1),
                         help="interleaved rounds after a warm-up, each time the best of them (default: "
                         f"{cpu.repeats} on CPU, {cuda.repeats} on CUDA)")  # fmt: skip
    bencher.add_argument("--json", type=Path, metavar="FILE", help="also write the table here")
    bencher.set_defaults(run=bench)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
