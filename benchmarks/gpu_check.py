"""The GPU check: the kernel tests with CUDA visible, then our ops and the whole network timed against the published
algorithms, in one command on a machine with a CUDA GPU (at most 8 minutes, the build included; docs/gpu.md):

    MAX_JOBS=16 pip install --no-build-isolation -e . &&
        python benchmarks/gpu_check.py --out DIR --budget-s $((420 - SECONDS))

(bash's SECONDS: the check gets what the build leaves of 7 minutes, a minute to spare for a case that overruns.)

1. tests: the kernel test files, with CUDA visible so that they take their GPU paths (the Triton kernels compiled,
   not interpreted), in pytest-xdist workers where it is installed; pass/fail counts and the tail of pytest's
   output. The timings run whatever the outcome.
2. ipa (the ``tita_fast.IPA`` module) and oaf (the OAF mixing op, NCHW inputs), N = 1, C = 60, at 1280x1024, 512x512
   and 256x256 (largest first: a run cut short by its budget loses the small sizes), forward and forward+backward,
   fp32 and bf16 (the ops on bf16 tensors): published, reference, compiled_reference (``torch.compile`` of the
   reference, ``dynamic=False``, compiled afresh for each case during its warm-up), triton and cuda.
3. tita_forward (the whole TITA forward, one gray pair, inference mode) at 1280x1024 in fp32 and bf16 (autocast),
   and train_step (``Trainer.train_step``: 3 tasks x 8 x 64x64 crops of ../shared/data, faithful FAMO, fp32),
   published (:func:`tita_fast.baseline.published_ops`) against ours (the ``auto`` backend).

``ms`` is the best of interleaved rounds after a warm-up call, ``peak_mib`` what torch allocates during one more call
beyond what was allocated before it. A run that fails (backend unavailable, compile error, out of memory) or that
the time budget leaves out is a row with an ``error`` and ``ms`` null. Each section gets a share of ``--budget-s``
(time a section leaves unused goes to those after it); a case starts only before its section's deadline.

Writes DIR/gpu_report.json ({"device", "torch", "triton", "command", "tests", "rows"}), DIR/gpu_report.md (a table
of the same rows) and DIR/pytest.log; the reports are rewritten after every row, so a run killed midway leaves
what it measured.

``--smoke`` (CI, tests/test_gpu_check.py): tiny sizes, on CPU when there is no GPU (the Triton kernels under
Triton's interpreter), one quick test file, neither compiling nor the training step; so that this script cannot
rot.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# Without a GPU the Triton kernels run under Triton's interpreter, which must be chosen before triton is first
# imported (as tests/conftest.py does).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# tita_speed is found in this script's folder, which Python puts first on sys.path
from tita_speed import DATA, TRAIN_TASKS, train_runs  # noqa: E402

from tita_fast.bench import ipa_cases, oaf_cases  # noqa: E402
from tita_fast.bench.headline import size_text  # noqa: E402
from tita_fast.bench.measure import device_name, interleaved_best, peak_memory_bytes, write_json  # noqa: E402
from tita_fast.bench.network import IMPLEMENTATIONS as NETWORK_IMPLEMENTATIONS  # noqa: E402
from tita_fast.bench.network import forward_runs  # noqa: E402
from tita_fast.train.config import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Report name -> the name the benchmark cases give the implementation
OP_IMPLEMENTATIONS = {"published": "published", "reference": "reference", "compiled_reference": "compiled-reference",
                      "triton": "triton", "cuda": "cuda"}  # fmt: skip
KERNEL_TESTS = ("tests/test_ipa_kernels.py", "tests/test_ipa_triton.py", "tests/test_oaf_kernels.py",
                "tests/test_window_attention.py")  # fmt: skip
SHARES = {"tests": 0.3, "ops": 0.45, "network": 0.15, "train_step": 0.1}  # of --budget-s, by section
TEST_OUTCOMES = {"PASSED": "passed", "FAILED": "failed", "SKIPPED": "skipped", "ERROR": "errors"}
# pytest -v's line for each test, "tests/file.py::name[params] PASSED   [ 12%]", or with pytest-xdist
# "[gw3] [ 12%] PASSED tests/file.py::name[params]"
TEST_LINE = re.compile(r"^\[gw\d+\] \[\s*\d+%\] ([A-Z]+) \S+::|^\S+::.* ([A-Z]+)\s+\[\s*\d+%\]$", re.MULTILINE)
XDIST_WORKERS = 16  # the kernel tests' time is mostly Triton compiling kernels, one at a time in each process
TAIL_LINES = 40


@dataclass(frozen=True)
class Plan:
    op_sizes: tuple[tuple[int, int], ...]  # (height, width), largest first
    network_size: tuple[int, int]  # (height, width)
    train_batch: int  # per task
    test_files: tuple[str, ...]
    op_repeats: int
    network_repeats: int  # tita_forward and train_step, whose published calls take up to seconds each
    budget_s: float
    left_out: dict[str, str]  # op or implementation -> why this plan leaves it out


GPU = Plan(
    op_sizes=((1024, 1280), (512, 512), (256, 256)),
    network_size=(1024, 1280),
    train_batch=8,
    test_files=KERNEL_TESTS,
    op_repeats=10,
    network_repeats=3,
    budget_s=240,
    left_out={},
)
SMOKE = Plan(
    op_sizes=((8, 8),),
    network_size=(32, 32),
    train_batch=8,
    test_files=("tests/test_backends.py",),
    op_repeats=1,
    network_repeats=1,
    budget_s=90,
    left_out={
        "compiled_reference": "not run with --smoke: compiling takes 10-25 s a case on CPU",
        "train_step": "not run with --smoke: a step takes 4-8 s on CPU even at 3 x 1 x 64x64",
    },
)


def passes(backward: bool) -> str:
    return "forward+backward" if backward else "forward"


def failed(error: str) -> dict:
    return {"ms": None, "peak_mib": None, "error": error}


def describe(error: Exception) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Budget:
    """Deadlines of the sections: each gets its share of the time left when it starts, so time that one leaves
    unused goes to those after it."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.shares = dict(SHARES)

    def deadline(self, section: str) -> float:
        share = self.shares.pop(section)
        now = time.monotonic()
        return now + max(0.0, self.end - now) * share / (share + sum(self.shares.values()))


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


class Report:
    """The test results and the rows so far, rewritten to ``out`` after every change."""

    def __init__(self, out: Path, device: torch.device, command: str, plan: Plan):
        self.out, self.device, self.command, self.plan = out, device, command, plan
        self.triton = triton_version()
        self.tests: dict | None = None
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        result = row["error"] if "error" in row else f"{row['ms']:.3f} ms, {row['peak_mib']:.1f} MiB"
        print(f"{row['op']} {row['size']} {row['pass']} {row['precision']} {row['impl']}: {result}", flush=True)
        self.write()

    def write(self) -> None:
        fields = {"triton": self.triton, "tests": self.tests}
        write_json(self.out / "gpu_report.json", self.device, self.rows, self.command, fields)
        (self.out / "gpu_report.md").write_text(self.markdown())

    def markdown(self) -> str:
        lines = [
            "# GPU check", "",
            f"{device_name(self.device)}, torch {torch.__version__}, triton {self.triton}", "",
            f"Command: `{self.command}`", "", "## Tests", "",
        ]  # fmt: skip
        tests = self.tests
        if tests:
            counts = ", ".join(f"{tests[name]} {name}" for name in TEST_OUTCOMES.values())
            note = f" ({tests['note']})" if tests["note"] else ""
            lines += [f"`{tests['command']}`: {counts} in {tests['seconds']:.0f} s, exit code {tests['returncode']}"
                      f"{note}.", ""]  # fmt: skip
        published_ms = {_case_key(row): row["ms"] for row in self.rows if row["impl"] == "published"}
        lines += [
            "## Timings", "",
            f"ms: best of {self.plan.op_repeats} (ipa, oaf) or {self.plan.network_repeats} (tita_forward, train_step)"
            " interleaved rounds after a warm-up call (compiling happens in the warm-up); peak MiB: torch's"
            " allocations during one more call beyond those before it; bf16: ipa and oaf on bf16 tensors,"
            " tita_forward and train_step under autocast; speed-up: published ms / ms.", "",
            "| op | size | pass | precision | impl | ms | peak MiB | speed-up | error |",
            "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |",
        ]  # fmt: skip
        for row in self.rows:
            measured = row["ms"] is not None
            ms, peak = (f"{row['ms']:.3f}", f"{row['peak_mib']:.1f}") if measured else ("-", "-")
            baseline = published_ms.get(_case_key(row))
            speedup = f"{baseline / row['ms']:.2f}x" if measured and baseline else ""
            error = row.get("error", "").replace("|", "\\|")
            lines.append(f"| {row['op']} | {row['size']} | {row['pass']} | {row['precision']} | {row['impl']} | {ms} "
                         f"| {peak} | {speedup} | {error} |")  # fmt: skip
        if tests:
            lines += ["", "## pytest output (tail)", "", "```text", tests["tail"], "```"]
        return "\n".join(lines) + "\n"


def _case_key(row: dict) -> tuple[str, str, str, str]:
    return row["op"], row["size"], row["pass"], row["precision"]


def run_tests(files: tuple[str, ...], device: torch.device, deadline: float, log_path: Path) -> dict:
    """pytest on ``files`` in a child process, stopped at ``deadline``: its counts and the tail of its output."""
    # the GPU machines' image has pytest-xdist
    workers = ["-n", str(min(XDIST_WORKERS, os.cpu_count() or 1))] if importlib.util.find_spec("xdist") else []
    arguments = ["-m", "pytest", "-v", "-p", "no:cacheprovider", *workers, *files]
    environment = dict(os.environ)
    if device.type == "cuda":
        environment.pop("TRITON_INTERPRET", None)  # the kernels compiled for the GPU, not interpreted on CPU
    start = time.monotonic()
    note = None
    with log_path.open("w") as log:
        # in a session of its own, so that stopping it stops the xdist workers too
        child = subprocess.Popen([sys.executable, *arguments], cwd=REPO, env=environment, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            returncode = child.wait(timeout=max(1.0, deadline - start))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            returncode, note = None, f"stopped after {time.monotonic() - start:.0f} s, its share of the time budget"
    output = log_path.read_text(errors="replace")
    outcomes = [with_xdist or without for with_xdist, without in TEST_LINE.findall(output)]
    counts = {name: outcomes.count(outcome) for outcome, name in TEST_OUTCOMES.items()}
    return {"command": shlex.join(["python", *arguments]), "returncode": returncode,
            "seconds": time.monotonic() - start, **counts, "note": note,
            "tail": "\n".join(output.splitlines()[-TAIL_LINES:])}  # fmt: skip


def measure(runs: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, dict]:
    """Per implementation ``{"ms", "peak_mib"}``, or :func:`failed` for one that raised: it is left out of the
    later rounds, and the others go on."""
    errors = {}

    def guarded(name: str, run: Callable[[], None]) -> Callable[[], None]:
        def call():
            if name in errors:
                return
            try:
                run()
                return
            except Exception as error:
                errors[name] = describe(error)
            release_memory(device)  # once the error, and the tensors its traceback holds, are gone

        return call

    guarded_runs = {name: guarded(name, run) for name, run in runs.items()}
    best = interleaved_best(guarded_runs, repeats)
    peaks = {name: peak_memory_bytes(run, device) for name, run in guarded_runs.items() if name not in errors}
    return {name: failed(errors[name]) if name in errors else {"ms": best[name] * 1e3, "peak_mib": peaks[name] / 2**20}
            for name in runs}  # fmt: skip


@dataclass(frozen=True)
class Case:
    op: str
    size: str
    backward: bool
    precision: str
    implementations: tuple[str, ...]
    runs: Callable[[], dict[str, Callable[[], None]]]  # builds the runs (allocating the inputs) when it is measured
    repeats: int


def op_cases(plan: Plan, device: torch.device) -> Iterator[Case]:
    for size in plan.op_sizes:
        for precision, dtype in PRECISIONS.items():
            for op in ("ipa", "oaf"):
                for backward in (False, True):

                    def runs(op=op, size=size, dtype=dtype, backward=backward):
                        torch.compiler.reset()  # compiled_reference compiles for this case only
                        if op == "ipa":
                            module, a, b = ipa_cases.make_case(size, device, dtype)
                            return {impl: ipa_cases.step(module, a, b, name, backward)
                                    for impl, name in OP_IMPLEMENTATIONS.items()}  # fmt: skip
                        case = oaf_cases.Case(size, device, "nchw", dtype=dtype)
                        return {impl: oaf_cases.step(case, "op", name, backward)
                                for impl, name in OP_IMPLEMENTATIONS.items()}  # fmt: skip

                    yield Case(op, size_text(size), backward, precision, tuple(OP_IMPLEMENTATIONS), runs,
                               plan.op_repeats)  # fmt: skip


def network_cases(plan: Plan, device: torch.device) -> Iterator[Case]:
    for precision in PRECISIONS:
        yield Case("tita_forward", size_text(plan.network_size), False, precision, tuple(NETWORK_IMPLEMENTATIONS),
                   lambda precision=precision: forward_runs(plan.network_size, precision, device),
                   plan.network_repeats)  # fmt: skip


def train_step_cases(plan: Plan, device: torch.device, out_dir: Path) -> Iterator[Case]:
    crop = TrainConfig.crop_size  # train_runs keeps the trainer's default crops
    size = f"{len(TRAIN_TASKS)}x{plan.train_batch}x{crop}x{crop}"
    yield Case("train_step", size, True, "fp32", tuple(NETWORK_IMPLEMENTATIONS),
               lambda: train_runs("fp32", device, out_dir, batch=plan.train_batch), plan.network_repeats)  # fmt: skip


def run_case(case: Case, plan: Plan, deadline: float, report: Report, device: torch.device) -> None:
    """Measures the case's implementations but those the plan leaves out (all of them once ``deadline`` has
    passed), and adds their rows to the report."""
    if time.monotonic() > deadline:
        spent = f"not run: the time budget (--budget-s {plan.budget_s:g}) was spent before this case"
        results = dict.fromkeys(case.implementations, failed(spent))
    elif case.op in plan.left_out:
        results = dict.fromkeys(case.implementations, failed(plan.left_out[case.op]))
    else:
        results = {impl: failed(plan.left_out[impl]) for impl in case.implementations if impl in plan.left_out}
    if len(results) < len(case.implementations):
        try:
            runs = {impl: run for impl, run in case.runs().items() if impl not in results}
            results |= measure(runs, device, case.repeats)
        except Exception as error:  # building the inputs failed (out of memory, say): every row says why
            results = dict.fromkeys(case.implementations, failed(describe(error))) | results
        release_memory(device)
    for impl in case.implementations:
        report.add({"op": case.op, "size": case.size, "pass": passes(case.backward), "precision": case.precision,
                    "impl": impl, **results[impl]})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_report.json, gpu_report.md, pytest.log")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU when there is no GPU (CI)")
    parser.add_argument("--budget-s", type=float, help=f"seconds for all sections (default {GPU.budget_s:g}, "
                        f"{SMOKE.budget_s:g} with --smoke)")  # fmt: skip
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("without --smoke the check needs a CUDA device, and this machine has none")
    plan = SMOKE if args.smoke else GPU
    if device.type == "cpu":
        # The smoke's tiny ops gain nothing from more threads; on a busy machine OpenMP's waits for them cost 100x
        torch.set_num_threads(1)
    if args.budget_s is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    if not DATA.is_dir():
        missing = f"not run: the training step reads the real pairs in {DATA}, which is missing"
        plan = dataclasses.replace(plan, left_out={"train_step": missing, **plan.left_out})
    budget = Budget(plan.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out, device, shlex.join(["python", *sys.argv]), plan)
    report.write()

    report.tests = run_tests(plan.test_files, device, budget.deadline("tests"), args.out / "pytest.log")
    report.write()
    print(f"tests: {', '.join(f'{report.tests[name]} {name}' for name in TEST_OUTCOMES.values())}", flush=True)

    for section, cases in (("ops", op_cases), ("network", network_cases)):
        deadline = budget.deadline(section)
        for case in cases(plan, device):
            run_case(case, plan, deadline, report, device)
    deadline = budget.deadline("train_step")
    with tempfile.TemporaryDirectory() as out_dir:  # the trainers' output folders
        for case in train_step_cases(plan, device, Path(out_dir)):
            run_case(case, plan, deadline, report, device)
    print(f"wrote {args.out / 'gpu_report.json'} and {args.out / 'gpu_report.md'}")


if __name__ == "__main__":
    main()
