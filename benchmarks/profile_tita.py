"""Where the time of a TITA forward or training step goes, per component, ours against the published algorithm.

    python benchmarks/profile_tita.py --size 256 --json benchmarks/results/profile_cpu.json
    python benchmarks/profile_tita.py --train --batch 8 --size 64 --json ...   # a training step, 3 tasks x batch

Components are the modules the network is built of (timed from the moment the outermost one of them is entered
to its exit, so an OAF's own convolutions count as OAF): convolutions (first/last, outside OAF), LayerNorms,
window self-attention, window cross-attention (q/kv/proj linears included), IPA, OAF, MLPs (without autograd the
blocks' residual-MLP op, their second LayerNorm and residual add included); plus shift-mask
construction, rolls with window partition/merge, and the image padding, timed by wrapping those functions.
"other" is the rest (residual adds, token reshapes, the loss in a step). Backward ops are attributed by their
autograd node to the same components where the node says which (convolution, LayerNorm, the fused ops, softmax
and batched matmuls = attention); the rest of backward, including the linears shared by attention and MLP,
is reported as "backward: linear/other". "published" swaps in the published IPA, OAF and window-attention
algorithms (reference/published.py), the last rebuilding the dense shift mask at every call as the published code
does for any size but img_size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

import tita_fast
from tita_fast.baseline import published_ops
from tita_fast.bench.measure import device_name
from tita_fast.nn import swin, tita
from tita_fast.nn.ipa import IPA
from tita_fast.nn.layers import Mlp
from tita_fast.nn.oaf import OAF
from tita_fast.ops.window_attention import ShiftMask

COMPONENTS: list[tuple[type[nn.Module], str]] = [
    (OAF, "OAF"),
    (IPA, "IPA"),
    (swin.CrossWindowAttention, "window cross-attention"),
    (swin.WindowAttention, "window self-attention"),
    (Mlp, "MLPs"),
    (nn.LayerNorm, "LayerNorms"),
    (nn.Conv2d, "convolutions"),
]
FUNCTIONS = {
    "mask construction": [(swin._ShiftedWindows, "_mask"), (ShiftMask, "dense")],
    "rolls + window partition/merge": [(swin._ShiftedWindows, "_to_windows"), (swin._ShiftedWindows, "_from_windows")],
    "padding": (tita, "reflect_pad_to_multiple"),
    "MLPs": (swin, "_residual_mlp"),  # inference: the block's second LayerNorm and residual add included
}
BACKWARD = [
    ("Convolution", "convolutions"),
    ("LayerNorm", "LayerNorms"),
    ("ipa", "IPA"),
    ("oaf", "OAF"),
    ("window_attention", "attention core"),
    ("Softmax", "attention core"),
    ("Bmm", "attention core"),
    ("Roll", "rolls + window partition/merge"),
]


class Timer:
    """Attributes wall time to the outermost active component (synchronising CUDA at every boundary)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.active: str | None = None
        self.start = 0.0
        self.seconds: dict[str, float] = defaultdict(float)

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def component(self, name: str) -> Iterator[None]:
        if self.active is not None:
            yield
            return
        self.active, self.start = name, self._now()
        try:
            yield
        finally:
            self.seconds[name] += self._now() - self.start
            self.active = None


@contextlib.contextmanager
def instrumented(model: nn.Module, timer: Timer) -> Iterator[None]:
    handles, patched = [], []
    # IPA and OAF are attached flat (not registered submodules, see nn.layers.attach_flat): find them as attributes
    flat = [v for m in model.modules() for v in vars(m).values() if isinstance(v, (IPA, OAF))]
    for module in [*flat, *model.modules()]:
        name = next((label for cls, label in COMPONENTS if isinstance(module, cls)), None)
        if name is None:
            continue
        contexts: list[contextlib.AbstractContextManager] = []

        def pre(_m, _args, name=name, contexts=contexts):
            contexts.append(timer.component(name))
            contexts[-1].__enter__()

        def post(_m, _args, _out, contexts=contexts):
            contexts.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    for label, targets in FUNCTIONS.items():
        for owner, attr in targets if isinstance(targets, list) else [targets]:
            original = getattr(owner, attr)

            def wrapped(*args, original=original, label=label, **kwargs):
                with timer.component(label):
                    return original(*args, **kwargs)

            setattr(owner, attr, wrapped)
            patched.append((owner, attr, original))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for owner, attr, original in patched:
            setattr(owner, attr, original)


def backward_table(prof) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if not event.key.startswith("autograd::engine::evaluate_function"):
            continue
        label = next((name for key, name in BACKWARD if key.lower() in event.key.lower()), "linear/other")
        out[f"backward: {label}"] += event.cpu_time_total / 1e6  # each node with the ops it ran
    return out


def profile(args, implementation: str) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = tita_fast.TITA().to(device)
    context = contextlib.ExitStack if implementation == "ours" else published_ops
    if args.train:
        model.train()
        n = 3 * args.batch
        a, b = torch.rand(2, n, 1, args.size, args.size, device=device).unbind(0)
    else:
        model.eval()
        a, b = torch.rand(2, 1, 1, args.size, args.size, device=device).unbind(0)

    def step():
        if args.train:
            out = model(a, b)
            out.mean().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(a, b)

    with context():
        step()  # warm-up
        timer = Timer(device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        with instrumented(model, timer), torch.profiler.profile(activities=activities) as prof:
            start = timer._now()
            step()
            total = timer._now() - start
    rows = dict(timer.seconds)
    if args.train:
        rows.update(backward_table(prof))
    forward_total = sum(v for k, v in timer.seconds.items())
    rows["other"] = total - forward_total - sum(v for k, v in rows.items() if k.startswith("backward"))
    return {"total_s": total, "components_s": dict(sorted(rows.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--train", action="store_true", help="a training step (forward + backward) of 3 x batch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {name: profile(args, name) for name in ("published", "ours")}
    names = list(dict.fromkeys(k for r in results.values() for k in r["components_s"]))
    print(f"{'component':<36}" + "".join(f"{n:>22}" for n in results))
    for name in names:
        cells = []
        for r in results.values():
            value = r["components_s"].get(name, 0.0)
            cells.append(f"{value * 1000:12.1f} ms {100 * value / r['total_s']:5.1f}%")
        print(f"{name:<36}" + "".join(f"{c:>22}" for c in cells))
    print(f"{'total':<36}" + "".join(f"{r['total_s'] * 1000:12.1f} ms       " for r in results.values()))
    if args.json:
        meta = {"command": " ".join(["python", *sys.argv]), "device": device_name(torch.device(args.device)),
                "torch": torch.__version__, "args": vars(args)}  # fmt: skip
        Path(args.json).write_text(json.dumps({"meta": meta, **results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
