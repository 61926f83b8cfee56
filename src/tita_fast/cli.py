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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tita-fast", description="Fast, exact TITA image fusion.")
    parser.add_argument("--version", action="version", version=f"tita_fast {tita_fast.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, devices and backends").set_defaults(run=info)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
