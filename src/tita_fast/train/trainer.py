"""The TITA trainer: every step runs one batch of every task through the model, weighs the task losses with FAMO,
takes an Adam step and updates the EMA copy of the weights (the released model).

Exact resume: every random draw is a function of the step: the batches (see :class:`TaskBatches`) and the
model's stochastic depth, whose generator is reseeded from (seed, rank, step) at each step. A checkpoint
therefore holds no generator state; model, EMA, optimiser, FAMO (and the fp16 gradient scaler) and the step
are all a resumed run needs to end bit-identical to an uninterrupted one.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes its share of every task's batch, DDP
averages the gradients, FAMO averages every task loss over the ranks, and only rank 0 logs and writes. K ranks
with batch b train as one process with batch K*b would, except that the vif and mff losses weigh their SSIM terms
by gradient means over each rank's share of the batch (as the published code does per GPU).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tita_fast.backends import use_backend
from tita_fast.devices import resolve_device
from tita_fast.nn import TITA
from tita_fast.train.config import RESUMABLE_OVERRIDES, TrainConfig, apply_overrides
from tita_fast.train.data import TaskBatches, TaskPairs
from tita_fast.train.famo import FAMO
from tita_fast.train.losses import build_loss

CHECKPOINTS = "checkpoints"
LATEST = "latest"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    def __init__(self, config: TrainConfig, resume: str | os.PathLike | bool | None = None, overrides=()):
        """``resume``: a checkpoint directory, or ``True`` for the latest one in ``config.out_dir``. On resume
        the checkpoint's configuration is used; of ``overrides`` (keys set on the command line) only the
        :data:`RESUMABLE_OVERRIDES` may differ from it."""
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.out_dir = Path(config.out_dir)
        checkpoint = None if not resume else find_checkpoint(self.out_dir if resume is True else resume)
        state = None
        if checkpoint is not None:
            state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
            config = TrainConfig.from_dict({**_resumed(state["config"], overrides), "out_dir": config.out_dir})
        elif (self.out_dir / CHECKPOINTS).exists() and any((self.out_dir / CHECKPOINTS).iterdir()):
            raise FileExistsError(
                f"{self.out_dir} already holds checkpoints: pass --resume to continue that run, or another out_dir"
            )
        self.config = config
        self.device = self._device(config.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = TITA(**config.model).to(self.device)
        if config.init_weights and checkpoint is None:
            self._init_from(config.init_weights)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.task_names = list(config.tasks)
        self.losses = [build_loss(t.loss, config.vif_weight, config.qabf_weight) for t in config.tasks.values()]
        self.batches = [
            TaskBatches(TaskPairs(name, t.sources, min_size=config.crop_size, cache=config.cache_images),
                        config.batch_size, config.crop_size, config.flip, config.seed, self.rank, self.world_size,
                        config.workers)
            for name, t in config.tasks.items()
        ]  # fmt: skip
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.famo = FAMO(
            len(self.task_names), gamma=config.famo_gamma, w_lr=config.famo_w_lr, max_norm=config.famo_max_norm,
            device=self.device, sync_losses=self.world_size > 1,
        )  # fmt: skip
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0
        if checkpoint is not None:
            self._load(checkpoint, state)
        self.network = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # static graph: the same parameters get gradients every step (not the published conv_first*_B, unused)
            self.network = DistributedDataParallel(self.model, device_ids=ids, static_graph=True)

    # -- setup -------------------------------------------------------------------------------------------------

    def _device(self, name: str) -> torch.device:
        device = resolve_device(name)
        if device.type == "cuda":
            if self.world_size > 1:
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            elif device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        return device

    # -- training ----------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train up to ``config.iterations`` steps; returns the last step's task losses."""
        config, writing = self.config, self.rank == 0
        if writing:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.out_dir / "config.json", json.dumps(config.to_dict(), indent=2).encode())
        log = CsvLog(self.out_dir / "log.csv", self.task_names, self.step) if writing else None
        bar = tqdm(total=config.iterations, initial=self.step, disable=not (writing and config.progress),
                   desc="train", unit="step", dynamic_ncols=True)  # fmt: skip
        last: dict[str, float] = {}
        start = time.perf_counter()
        try:
            with use_backend(config.backend):
                while self.step < config.iterations:
                    losses, objective = self.train_step()
                    self.step += 1
                    last = dict(zip(self.task_names, losses.tolist(), strict=True))
                    weights = self.famo.weights.tolist()
                    bar.update(1)
                    bar.set_postfix_str(_postfix(last, weights))
                    if log is not None and (self.step % config.log_every == 0 or self.step == config.iterations):
                        log.write(self.step, time.perf_counter() - start, objective, last, weights)
                    if self.step % config.checkpoint_every == 0 or self.step == config.iterations:
                        self.save_checkpoint()
                        if log is not None:
                            log.plot(self.out_dir / "curves.png")
        finally:
            bar.close()
            for batches in self.batches:
                batches.close()
        return last

    def train_step(self) -> tuple[torch.Tensor, float]:
        """One step at ``self.step``; returns the task losses it optimised (on this rank's share of the batch,
        averaged over ranks) and the FAMO objective."""
        config = self.config
        self.model.train()
        torch.manual_seed(_mix(config.seed, self.rank, self.step))  # stochastic depth, reproducible per step
        pairs = [b.batch(self.step) for b in self.batches]
        A = torch.cat([a for a, _ in pairs]).to(self.device, non_blocking=True)
        B = torch.cat([b for _, b in pairs]).to(self.device, non_blocking=True)
        losses = self._task_losses(self.network, A, B)
        if config.famo_update == "fast" and self.famo.prev_losses is not None:
            self.famo.update(losses.detach())  # the loss change from the last step's batch to this one
        self.optimizer.zero_grad(set_to_none=True)
        objective = self.famo.get_weighted_loss(losses)
        self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)
        self.famo.clip(self.model.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if config.famo_update == "faithful":
            with torch.no_grad():  # the same batch after the step, as published (stochastic depth active)
                self.famo.update(self._task_losses(self.model, A, B))
        self._update_ema()
        return self.famo.prev_losses.cpu(), objective.item()

    def _task_losses(self, network: torch.nn.Module, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        # All tasks share one forward: the network treats every image independently, and one batch of 3x8 is
        # faster than three of 8.
        autocast = AUTOCAST_DTYPES.get(self.config.precision)
        with torch.autocast(self.device.type, dtype=autocast, enabled=autocast is not None):
            fused = network(A, B)
        fused, A, B = (t.float().split(self.config.batch_size) for t in (fused, A, B))
        losses = [loss(a, b, f) for loss, a, b, f in zip(self.losses, A, B, fused, strict=True)]
        return torch.stack(losses) * self.config.loss_weight

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.ema_decay
        ema, live = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_mul_(ema, decay)
        torch._foreach_add_(ema, live, alpha=1 - decay)

    # -- checkpoints -------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write ``out_dir/checkpoints/step_XXXXXXXX`` atomically (rank 0); point ``latest`` at it."""
        if self.rank != 0:
            return None
        root = self.out_dir / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:08d}"
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        _usual_mode(staging, 0o777)
        metadata = {"tita_config": json.dumps(self.model.config), "step": str(self.step), "format": "tita_fast"}
        save_file(_state_tensors(self.model), staging / "model.safetensors", metadata=metadata)
        save_file(_state_tensors(self.ema), staging / "ema.safetensors", metadata=metadata)
        state = {
            "step": self.step,
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "famo": self.famo.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        torch.save(state, staging / "state.pt")
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _write_atomic(root / LATEST, name.encode())
        return final

    def _init_from(self, path: str) -> None:
        """The model (and so the EMA) starts from the weights in ``path`` (a published ``.pth`` or a tita-fast
        ``.safetensors``), which must fit the configured architecture; optimizer, FAMO and step start fresh."""
        loaded, wanted = TITA.from_checkpoint(path, map_location=self.device).state_dict(), self.model.state_dict()
        misfits = [k for k in wanted if k not in loaded or loaded[k].shape != wanted[k].shape]
        misfits += [k for k in loaded if k not in wanted]
        if misfits:
            first = misfits[0]
            shapes = " vs ".join(str(tuple(d[first].shape)) if first in d else "absent" for d in (loaded, wanted))
            raise ValueError(
                f"init_weights {path} does not fit the configured model: {len(misfits)} tensors differ, e.g. "
                f"{first} (file vs model: {shapes}); set the model keys of the run that wrote it"
            )
        self.model.load_state_dict(loaded)

    def _load(self, checkpoint: Path, state: dict) -> None:
        from safetensors.torch import load_file

        for module, file in ((self.model, "model.safetensors"), (self.ema, "ema.safetensors")):
            module.load_state_dict(load_file(checkpoint / file, device=str(self.device)))
        self.optimizer.load_state_dict(state["optimizer"])
        self.famo.load_state_dict(state["famo"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory itself, or the latest checkpoint of a run directory."""
    path = Path(path)
    if (path / "state.pt").exists():
        return path
    pointer = path / CHECKPOINTS / LATEST
    if pointer.exists():
        return path / CHECKPOINTS / pointer.read_text().strip()
    raise FileNotFoundError(f"{path} is neither a checkpoint directory (no state.pt) nor a run with checkpoints")


def checkpoint_config(checkpoint: str | os.PathLike, overrides=()) -> dict:
    """The training configuration saved in a checkpoint, with ``overrides`` (``key=value``) applied: only the
    :data:`RESUMABLE_OVERRIDES` may change, as the others would make the resumed run another run."""
    state = torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)
    return _resumed(state["config"], overrides)


def _resumed(saved: dict, overrides) -> dict:
    keys = {item.partition("=")[0].split(".")[0] for item in overrides}
    refused = sorted(keys - set(RESUMABLE_OVERRIDES))
    if refused:
        raise ValueError(
            f"on resume the checkpoint's configuration is used; {refused} cannot change "
            f"(only {list(RESUMABLE_OVERRIDES)} can)"
        )
    return apply_overrides(saved, overrides)


def _state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}


def _mix(*values: int) -> int:
    """A 63-bit seed from integers, stable across processes and runs."""
    return zlib.crc32(json.dumps(values).encode()) | (zlib.adler32(json.dumps(values).encode()) << 31)


def _postfix(losses: dict[str, float], weights: list[float]) -> str:
    shown = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
    return f"{shown} | w=" + "/".join(f"{w:.3f}" for w in weights)


def _usual_mode(path: Path, mode: int) -> None:
    """Give a temporary file or folder (created private by tempfile) the permissions of an ordinary one."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    _usual_mode(Path(tmp), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CsvLog:
    """``log.csv``: step, seconds, FAMO objective, every task's loss and weight. A resumed run drops the rows
    past its checkpoint's step, so the file tells one consistent story."""

    def __init__(self, path: Path, tasks: list[str], step: int):
        self.path = path
        self.columns = ["step", "seconds", "objective", *(f"loss_{t}" for t in tasks),
                        *(f"weight_{t}" for t in tasks)]  # fmt: skip
        self.rows = []
        if path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != self.columns:
                    raise ValueError(f"{path} has columns {reader.fieldnames}, this run writes {self.columns}")
                self.rows = [r for r in reader if int(r["step"]) <= step]
        self._rewrite()

    def write(self, step: int, seconds: float, objective: float, losses: dict, weights: list[float]) -> None:
        row = [step, f"{seconds:.3f}", f"{objective:.6g}", *(f"{v:.6g}" for v in losses.values()),
               *(f"{w:.6g}" for w in weights)]  # fmt: skip
        self.rows.append(dict(zip(self.columns, map(str, row), strict=True)))
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(row)

    def _rewrite(self) -> None:
        buffer = [",".join(self.columns)] + [",".join(r[c] for c in self.columns) for r in self.rows]
        _write_atomic(self.path, ("\n".join(buffer) + "\n").encode())

    def plot(self, path: Path) -> None:
        """Task losses and FAMO weights against the step, as a PNG (written atomically)."""
        if not self.rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        steps = [int(r["step"]) for r in self.rows]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, constrained_layout=True)
        for column in self.columns[3:]:
            axis = top if column.startswith("loss_") else bottom
            axis.plot(steps, [float(r[column]) for r in self.rows], label=column.split("_", 1)[1])
        top.set(ylabel="task loss", yscale="log", title="TITA training")
        bottom.set(xlabel="step", ylabel="FAMO weight")
        for axis in (top, bottom):
            axis.grid(alpha=0.3)
            axis.legend()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
        os.close(fd)
        _usual_mode(Path(tmp), 0o666)
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)


def train(config: TrainConfig, resume=None, overrides=()) -> Trainer:
    """Build a :class:`Trainer` and run it; returns it (model, EMA, FAMO inspectable)."""
    trainer = Trainer(config, resume=resume, overrides=overrides)
    trainer.fit()
    return trainer
