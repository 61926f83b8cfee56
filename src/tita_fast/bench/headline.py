"""The table of ``tita-fast bench``: our ops and the whole network against the published algorithms, time and
peak memory side by side in one run.

Rows, float32, each "published" (:func:`tita_fast.baseline.published_ops` and the published algorithms of
:mod:`tita_fast.reference.published`) against "ours" (the selected backend, ``auto`` unless ``TITA_FAST_BACKEND``
or ``use_backend`` says otherwise):

* IPA (the ``tita_fast.IPA`` module; N = 1, C = 60, 6 heads), forward and forward+backward;
* the OAF mixing op (after the generators) and the whole ``tita_fast.OAF`` module (N = 1, C = 60, NCHW inputs),
  forward and forward+backward;
* the TITA forward (published configuration, seeded random weights, one gray pair, inference mode).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

import tita_fast
from tita_fast.bench import ipa_cases, oaf_cases
from tita_fast.bench.measure import TABLE_HEADER, compare, device_name, format_row, write_json
from tita_fast.bench.network import forward_runs


@dataclass(frozen=True)
class Settings:
    op_size: int  # side of the square IPA and OAF inputs
    network_size: tuple[int, int]  # (height, width) of the network's pair
    repeats: int


# Sized so that the CPU run takes about a minute on 2 cores; the GPU one uses the sizes of the published claims.
DEFAULTS = {"cpu": Settings(128, (192, 192), 3), "cuda": Settings(512, (1024, 1280), 10)}


def chosen_backends(device: torch.device) -> dict[str, str]:
    """The backend "ours" runs each fused op with on float32 tensors of ``device``."""
    probe = torch.empty(1, device=device)
    chosen = {}
    for op, implementations in tita_fast.backends._registry.items():
        run = tita_fast.backends.choose(op, probe)
        chosen[op] = next(name for name, implementation in implementations.items() if implementation.run is run)
    return chosen


def _passes(backward: bool) -> str:
    return "forward+backward" if backward else "forward"


def rows(device: torch.device, settings: Settings) -> Iterator[dict]:
    """The table's rows (:func:`tita_fast.bench.measure.compare`), each as soon as it is measured."""
    implementations = {"published": "published", "ours": tita_fast.selected_backend()}
    size, repeats = settings.op_size, settings.repeats
    module, a, b = ipa_cases.make_case(size, device)
    for backward in (False, True):
        runs = {name: ipa_cases.step(module, a, b, impl, backward) for name, impl in implementations.items()}
        yield compare(f"IPA {_passes(backward)} {size}x{size}", runs, device, repeats)
    case = oaf_cases.Case((size, size), device, "nchw")
    for scope, label in (("op", "OAF mix op"), ("step", "OAF module")):
        for backward in (False, True):
            runs = {name: oaf_cases.step(case, scope, impl, backward) for name, impl in implementations.items()}
            yield compare(f"{label} {_passes(backward)} {size}x{size}", runs, device, repeats)
    network_runs = forward_runs(settings.network_size, "fp32", device)
    yield compare(f"TITA forward {size_text(settings.network_size)}", network_runs, device, repeats)


def size_text(size: tuple[int, int]) -> str:
    """(height, width) -> "WIDTHxHEIGHT", as ``--network-size`` takes it."""
    height, width = size
    return f"{width}x{height}"


def command_line(device: torch.device, settings: Settings, json_path: Path | None) -> str:
    """The ``tita-fast bench`` command that repeats this run, every setting spelled out (defaults vary by device)."""
    command = (f"tita-fast bench --device {device} --size {settings.op_size} "
               f"--network-size {size_text(settings.network_size)} --repeats {settings.repeats}")  # fmt: skip
    return f"{command} --json {json_path}" if json_path else command


def run(device: torch.device, settings: Settings, json_path: Path | None = None) -> list[dict]:
    """Print the header and the table row by row, then write the rows to ``json_path`` if given."""
    command = command_line(device, settings, json_path)
    backends = ", ".join(f"{op} {name}" for op, name in chosen_backends(device).items())
    print(f"tita_fast {tita_fast.__version__}: ours (backend {tita_fast.selected_backend()}: {backends}) against the "
          "published algorithms, float32")  # fmt: skip
    print(f"device   {device_name(device)}")
    print(f"torch    {torch.__version__}")
    print(f"command  {command}")
    print(TABLE_HEADER, flush=True)
    table = []
    for row in rows(device, settings):
        print(format_row(row), flush=True)
        table.append(row)
    print(f"speed-up: published time / ours, best of {settings.repeats} interleaved rounds after a warm-up; "
          "mem ratio: ours peak / published peak (memory torch allocates during one call)")  # fmt: skip
    if json_path:
        write_json(json_path, device, table, command)
    return table
