"""The ``tita-fast`` command line."""

from __future__ import annotations

import argparse
import platform
import sys

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


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
