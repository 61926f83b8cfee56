"""Ahead-of-time compile of every Triton kernel of tita_fast for NVIDIA GPUs, on a machine without one.

    python benchmarks/triton_compile.py [--arch 90 80] [--channels 60 96 128] [--dtypes float32 bfloat16 float16]
                                        [--kernels ...] [--jobs N] [--json out.json] [--markdown]

Prints, for each kernel, architecture, channel count C and dtype, the registers, spill stores / loads (bytes per
thread) and stack frame that ptxas reports, and the shared memory Triton allocates. Exits nonzero when any
compile fails. ``bash .ci/check-triton-compile`` runs it in fresh environments (see docs/gpu.md).

The launches are not restated here: each op's own wrapper (tita_fast.kernels.ipa / .oaf) runs on small CPU
tensors with its kernels swapped for recorders, and every kernel launch it makes is compiled with triton.compile for
a GPU target. So argument types, compile-time arguments (BLOCK_M, BLOCK_C, DT, ...) and options (num_warps, maxnreg)
are those of the real launch, and the integer and pointer arguments get the 16-divisibility specialisation that
Triton's launcher would give them. Recorded shapes: IPA (4096, C) tokens with 6 heads (8 where 6 does not divide
C), OAF (1, C, 64, 64) maps (full 8 x 32 tiles, as on any image at least 32 wide).

Only torch (the CPU build does) and triton are needed: the kernel modules are imported without running
tita_fast/__init__.py, which would pull in the rest of the package's dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

# Compiled kernels, not the interpreter; and a fresh cache, since ptxas (and so its report) only runs on a cache miss.
os.environ["TRITON_INTERPRET"] = "0"
if "TRITON_CACHE_DIR" not in os.environ:
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-compile-cache-")
    _OWN_CACHE = True
else:
    _OWN_CACHE = False

import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy: not needed here
import torch  # noqa: E402
import triton  # noqa: E402
import triton.knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
ARCHS = (90, 80)
CHANNELS = (60, 96, 128)
DTYPES = ("float32", "bfloat16", "float16")
KERNELS = ("ipa_forward", "ipa_backward", "oaf_forward", "oaf_backward")
IPA_HEADS = 6  # what the TITA network builds its IPA with (tita_fast.nn.swin.IPA_HEADS)
IPA_ROWS = 4096
OAF_SIZE = 64
_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_ARCH = re.compile(r"for '(sm_\w+)'")


def kernel_module(op: str) -> types.ModuleType:
    """tita_fast.kernels.<op>, imported from the source tree without running the package's __init__."""
    for name, path in (("tita_fast", SRC / "tita_fast"), ("tita_fast.kernels", SRC / "tita_fast" / "kernels")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    return importlib.import_module(f"tita_fast.kernels.{op}")


class Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` records the launch instead of running it."""

    def __init__(self, fn):
        self.fn = fn
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def record(op: str, direction: str, channels: int, dtype: torch.dtype) -> list[tuple]:
    """(JITFunction, args, kwargs) of every launch the op's wrapper makes for one call."""
    module = kernel_module(op)
    name = f"_{op}_{direction}_kernel"
    recorder = Recorder(getattr(module, name))
    setattr(module, name, recorder)
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    try:
        if op == "ipa":
            c = channels
            heads = IPA_HEADS if c % IPA_HEADS == 0 else 8
            shapes = [(c, 2 * c), (c,), (c, c), (c,)] + [(3 * c, c), (3 * c,), (c, c), (c,)] * 2 + [(2, c), (2, c)]
            a, b, *params = (randn(*s) for s in [(IPA_ROWS, c), (IPA_ROWS, c), *shapes])
            if direction == "forward":
                module.ipa_forward(a, b, *params, heads)
            else:
                module.ipa_backward(randn(IPA_ROWS, c), randn(IPA_ROWS, c), a, b, *params, heads)
        else:
            size = (1, channels, OAF_SIZE, OAF_SIZE)
            logits = (1, 9, OAF_SIZE, OAF_SIZE)
            maps = [randn(*s) for s in (size, size, logits, logits, size, size, size, size)]
            rest = [randn(9), randn(9), randn(1, 6)]
            if direction == "forward":
                module.oaf_mix_forward(*maps, *rest)
            else:
                module.oaf_mix_backward(randn(*size), *maps, *rest)
    finally:
        setattr(module, name, recorder.fn)
    if not recorder.launches:
        raise RuntimeError(f"{op} {direction}: the wrapper launched no kernel")
    return [(recorder.fn, args, kwargs) for args, kwargs in recorder.launches]


def specialise(fn, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """signature, constexprs, attrs and options of a launch, as Triton's launcher derives them from the arguments:
    pointers and integers divisible by 16 get tt.divisibility 16, an integer 1 becomes a constant, unless the
    kernel marks the argument do_not_specialize."""
    names = fn.arg_names
    bound = dict(zip(names, args, strict=False))  # the rest come as keywords
    bound.update({k: v for k, v in kwargs.items() if k in names})
    options = {k: v for k, v in kwargs.items() if k not in names}
    missing = [n for n in names if n not in bound]
    if missing:
        raise TypeError(f"{fn.__name__}: launch without {missing}")
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(names):
        value, param = bound[name], fn.params[index]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
            if value.data_ptr() % 16 == 0 and not param.do_not_specialize_on_alignment:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{fn.__name__}: argument {name} of type {type(value).__name__} is not handled here")
        elif value == 1 and not param.do_not_specialize:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and not param.do_not_specialize and not param.do_not_specialize_on_alignment:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, options


def launches_of(job: tuple) -> list[tuple]:
    """(JITFunction, signature, constexprs, attrs, options) of each distinct launch of one (arch, kernel, C, dtype)."""
    _, kernel, channels, dtype_name = job
    op, direction = kernel.split("_")
    distinct = {}
    for fn, args, kwargs in record(op, direction, channels, getattr(torch, dtype_name)):
        launch = (fn, *specialise(fn, args, kwargs))
        distinct.setdefault(repr(launch[1:]), launch)
    return list(distinct.values())


def compile_launch(task: tuple) -> dict:
    """Compile launch ``index`` of ``job`` for its arch: ptxas's registers and spills, Triton's shared memory."""
    job, index = task
    fn, signature, constexprs, attrs, options = launches_of(job)[index]
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v as Triton runs it, printed to stdout
    triton.knobs.compilation.always_compile = True  # a cache hit would run no ptxas (a TRITON_CACHE_DIR given)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            source = ASTSource(fn, signature, constexprs, attrs)
            compiled = triton.compile(source, target=GPUTarget("cuda", job[0], 32), options=options)
    except Exception as error:  # noqa: BLE001 - every compile error is reported, and fails the check
        return {"error": f"{type(error).__name__}: {error}"}
    seconds = round(time.perf_counter() - start, 1)
    ptxas = log.getvalue()
    arch, stack, registers = _PTXAS_ARCH.search(ptxas), _PTXAS_STACK.search(ptxas), _PTXAS_REGISTERS.search(ptxas)
    if arch is None or stack is None or registers is None:
        return {"error": f"no ptxas report in the compile's output: {ptxas[-2000:]!r}"}
    return {
        "arch": arch.group(1), "registers": int(registers.group(1)), "stack_bytes": int(stack.group(1)),
        "spill_stores_bytes": int(stack.group(2)), "spill_loads_bytes": int(stack.group(3)),
        "shared_bytes": compiled.metadata.shared, "seconds": seconds,
    }  # fmt: skip


def print_table(rows: list[dict]) -> None:
    columns = (
        ("triton", "triton"), ("arch", "arch"), ("kernel", "kernel"), ("C", "C"), ("dtype", "dtype"),
        ("registers", "regs"), ("spill_stores_bytes", "spill st B"), ("spill_loads_bytes", "spill ld B"),
        ("shared_bytes", "shared B"), ("launch", "launch"),
    )  # fmt: skip
    cells = [[title for _, title in columns]]
    cells += [[str(row.get(key, "COMPILE ERROR" if key == "registers" else "")) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def markdown_table(rows: list[dict]) -> str:
    """The rows as docs/gpu.md shows them: one line per kernel, C and dtype, the architectures side by side."""
    archs = list(dict.fromkeys(row["arch"] for row in rows))
    lines = {}
    for row in rows:
        line = lines.setdefault((row["kernel"], row["C"], row["dtype"]), {"launch": row["launch"]})
        if "error" in row:
            line[row["arch"]] = "compile error | | "
        else:
            spills = f"{row['spill_stores_bytes']} / {row['spill_loads_bytes']}"
            line[row["arch"]] = f"{row['registers']} | {spills} | {row['shared_bytes']}"
    head = "| kernel | C | dtype | " + " | ".join(f"{a} regs | {a} spill st / ld B | {a} shared B" for a in archs)
    out = [head + " | launch |", "|" + " --- |" * (4 + 3 * len(archs))]
    for (kernel, channels, dtype), line in lines.items():
        cells = " | ".join(line.get(a, " | | ") for a in archs)
        out.append(f"| {kernel} | {channels} | {dtype} | {cells} | {line['launch']} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities (90: sm_90a)")
    parser.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles run in parallel")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--markdown", action="store_true", help="also print the table as docs/gpu.md has it")
    args = parser.parse_args()

    jobs = [(a, k, c, d) for a in args.arch for k in args.kernels for c in args.channels for d in args.dtypes]
    start = time.perf_counter()
    # Each distinct specialisation compiles once (the OAF kernels' C is a runtime argument: C = 96 and 128 launch the
    # same kernel); every (arch, kernel, C, dtype) still gets its row.
    rows, tasks = [], {}
    for job in jobs:
        for index, (fn, signature, constexprs, attrs, options) in enumerate(launches_of(job)):
            key = repr((job[0], fn.__name__, signature, constexprs, attrs, options))
            tasks.setdefault(key, (job, index))
            launch = " ".join([f"{k}={v}" for k, v in constexprs.items() if k.startswith("BLOCK")])
            launch += "".join(f" {k}={v}" for k, v in options.items())
            rows.append(({"triton": triton.__version__, "arch": f"sm_{job[0]}", "kernel": job[1], "C": job[2],
                          "dtype": job[3], "launch": launch}, key))  # fmt: skip
    # The longest first (IPA backward, then forward, wide C first), so that the workers finish together.
    order = sorted(tasks, key=lambda k: (KERNELS.index(tasks[k][0][1]) % 2 == 0, tasks[k][0][1][:3], -tasks[k][0][2]))
    try:
        if args.jobs > 1:
            # spawn, not fork: torch's thread pools do not survive a fork
            with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
                results = dict(zip(order, pool.map(compile_launch, [tasks[k] for k in order]), strict=True))
        else:
            results = {key: compile_launch(tasks[key]) for key in order}
    finally:
        if _OWN_CACHE:
            shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
    seconds = time.perf_counter() - start
    rows = [{**row, **results[key]} for row, key in rows]
    print_table(rows)
    if args.markdown:
        print("\n" + markdown_table(rows) + "\n")
    errors = [row for row in rows if "error" in row]
    for row in errors:
        where = f"{row['arch']} {row['kernel']} C={row['C']} {row['dtype']}"
        print(f"\nCOMPILE ERROR {where}:\n{row['error']}", file=sys.stderr)
    print(
        f"{len(rows) - len(errors)} kernels compiled ({len(tasks)} distinct), {len(errors)} failed, "
        f"triton {triton.__version__}, {seconds:.0f} s"
    )
    if args.json:
        record = {
            "triton": triton.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "seconds": round(seconds, 1), "rows": rows,
        }  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
