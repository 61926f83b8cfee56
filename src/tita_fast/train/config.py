"""Training configuration: our YAML/JSON format, the published ``config.json``, command-line overrides.

Our format (YAML or JSON), every key but ``tasks`` optional (defaults: the published training)::

    out_dir: runs/tita
    iterations: 20000
    tasks:
      ivif: {loss: vif, sources: [{task_path: data/LLVIP, subdir1: ir, subdir2: vi}]}
      mef:  {loss: mef, sources: [{task_path: data/SICE, subdir1: over, subdir2: under}]}
      mff:  {loss: mff, sources: [{task_path: data/RealMFF, subdir1: far, subdir2: near, name_map: realmff}]}
    model: {}            # TITA keyword arguments; {} is the published network

The published ``config.json`` (KAIR-style options, ``//`` comments allowed) is recognised by its ``datasets`` and
``train`` sections and translated (:func:`from_published`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tita_fast.nn import TITA
from tita_fast.train.data import PairSource
from tita_fast.train.losses import LOSSES

PRECISIONS = ("fp32", "bf16", "fp16")
FAMO_UPDATES = ("faithful", "fast")
# What may change on resume: the others would change the run's results.
RESUMABLE_OVERRIDES = ("out_dir", "iterations", "log_every", "checkpoint_every", "workers", "progress")


@dataclass
class TaskConfig:
    loss: str
    sources: list[PairSource]


@dataclass
class TrainConfig:
    tasks: dict[str, TaskConfig]
    model: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs/tita"
    iterations: int = 20000
    batch_size: int = 8
    crop_size: int = 64
    flip: bool = False
    lr: float = 2e-5
    loss_weight: float = 1.0
    vif_weight: float = 0.0  # add the VIF metric as a loss term (0 = the published loss; see train.metric_terms)
    qabf_weight: float = 0.0  # likewise the Qabf metric
    ema_decay: float = 0.999
    famo_gamma: float = 1e-3
    famo_w_lr: float = 0.025
    famo_max_norm: float = 1.0
    famo_update: str = "faithful"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    backend: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 1000
    workers: int = 0
    cache_images: bool = False
    progress: bool = True
    init_weights: str | None = None  # start from these weights (fine-tuning): a .pth or tita-fast .safetensors

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("the configuration names no tasks (key 'tasks')")
        for name, task in self.tasks.items():
            if task.loss not in LOSSES:
                raise ValueError(f"task {name!r}: unknown loss {task.loss!r}; choose one of {sorted(LOSSES)}")
            if not task.sources:
                raise ValueError(f"task {name!r} has no sources")
        choices = {"precision": PRECISIONS, "famo_update": FAMO_UPDATES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key in ("iterations", "batch_size", "crop_size", "log_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("vif_weight", "qabf_weight"):
            if not (isinstance(getattr(self, key), (int, float)) and 0 <= getattr(self, key) < float("inf")):
                raise ValueError(f"{key} must be a finite number >= 0, got {getattr(self, key)!r}")
        if self.vif_weight and self.crop_size < 41:
            raise ValueError(f"the VIF term needs crop_size >= 41 (its coarsest scale), got {self.crop_size}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tasks"] = {
            name: {"loss": task.loss, "sources": [_source_dict(s) for s in task.sources]}
            for name, task in self.tasks.items()
        }
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; valid keys: {sorted(known)}")
        if "tasks" not in raw:
            raise ValueError("the configuration names no tasks (key 'tasks')")
        tasks = {name: _task(name, spec) for name, spec in raw["tasks"].items()}
        return cls(**{**raw, "tasks": tasks})


def _source_dict(source: PairSource) -> dict[str, Any]:
    out = {"task_path": os.fspath(source.task_path), "subdir1": source.subdir1, "subdir2": source.subdir2}
    if source.name_map is not None:
        out["name_map"] = source.name_map
    return out


def _task(name: str, spec: Any) -> TaskConfig:
    if not isinstance(spec, dict) or set(spec) - {"loss", "sources"} or "sources" not in spec:
        raise ValueError(f"task {name!r} must be a mapping with 'sources' and optionally 'loss', got {spec!r}")
    sources = []
    for source in spec["sources"]:
        if not isinstance(source, dict) or set(source) - {"task_path", "subdir1", "subdir2", "name_map"}:
            raise ValueError(
                f"task {name!r}: a source needs task_path, subdir1, subdir2 (and name_map), got {source!r}"
            )
        sources.append(PairSource(**source))
    return TaskConfig(loss=spec.get("loss", name), sources=sources)


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping in a YAML or JSON file (JSON may carry ``//`` comments, as the published config.json)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read the configuration {path}: {err}") from None
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(_strip_comments(text))
        else:
            raw = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(raw).__name__}")
    return raw


def _strip_comments(text: str) -> str:
    # Drop // comments outside JSON strings (a path like "http://..." inside a string stays).
    return re.sub(r'("(?:\\.|[^"\\])*")|//[^\n]*', lambda m: m.group(1) or "", text)


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> TrainConfig:
    raw = read_file(path)
    published = "datasets" in raw and "train" in raw
    config = TrainConfig.from_dict(apply_overrides(from_published(raw) if published else raw, overrides))
    if published:
        # after the overrides: --set iterations=... decides whether the file's LR milestones fall inside the run
        for message in published_unread(raw, config.iterations):
            warnings.warn(message, UserWarning, stacklevel=2)
    return config


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` settings (dotted keys reach into mappings, values parsed as YAML scalars)."""
    raw = json.loads(json.dumps(raw))  # a deep copy
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"an override must look like key=value, got {item!r}")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a mapping")
        node[leaf] = yaml.safe_load(text)
    return raw


# The published options the translation reads (and path.pretrained_netG, path.root + task as out_dir); the others
# (TensorBoard, init types, netG depths/num_heads, which the published network takes and ignores...) do not change
# the training and are ignored; those that would if set otherwise (scheduler, optimizer) are checked by
# published_unread.
_PUBLISHED_TRAIN = {
    "G_optimizer_lr": "lr", "E_decay": "ema_decay", "gamma": "famo_gamma", "method_params_lr": "famo_w_lr",
    "iteration": "iterations", "manual_seed": "seed", "checkpoint_save": "checkpoint_every",
    "checkpoint_print": "log_every", "G_lossfn_weight": "loss_weight",
}  # fmt: skip
_PUBLISHED_DATA = {
    "patch_size": "crop_size",
    "dataloader_batch_size": "batch_size",
    "dataloader_num_workers": "workers",
}


def from_published(options: dict[str, Any]) -> dict[str, Any]:
    """Our configuration from the published training options (``config.json`` of the TITA code)."""
    train, data = options["train"], options["datasets"].get("train", {})
    if "trainsets" not in data:
        raise ValueError("published config: datasets.train.trainsets (the tasks' datasets) is missing")
    losses = train.get("G_lossfn_types", {})
    tasks = {}
    for task, sets in data["trainsets"].items():
        sources = []
        for set_name, spec in sets.items():
            source = {k: spec[k] for k in ("task_path", "subdir1", "subdir2")}
            if set_name == "RealMFF":  # the published loader pairs RealMFF's files by this rule
                source["name_map"] = "realmff"
            sources.append(source)
        tasks[task] = {"loss": losses.get(task, task), "sources": sources}
    raw: dict[str, Any] = {"tasks": tasks}
    raw.update({ours: train[theirs] for theirs, ours in _PUBLISHED_TRAIN.items() if train.get(theirs) is not None})
    raw.update({ours: data[theirs] for theirs, ours in _PUBLISHED_DATA.items() if data.get(theirs) is not None})
    model_keys = set(inspect.signature(TITA).parameters)
    raw["model"] = {k: v for k, v in options.get("netG", {}).items() if k in model_keys}
    if options.get("path", {}).get("pretrained_netG"):
        raw["init_weights"] = options["path"]["pretrained_netG"]
    root, name = options.get("path", {}).get("root"), options.get("task") or options.get("name")
    if root and name:
        raw["out_dir"] = os.path.join(root, name)
    return raw


def published_unread(options: dict[str, Any], iterations: int) -> list[str]:
    """Warnings for published options that are not read but, as set, would change the training of ``iterations``
    steps: a learning-rate decay inside the run (we train at a constant rate), an optimizer other than plain Adam, a
    dataset type other than ``mixed_equal`` (one batch per task per step). Empty for the published config.json."""
    train, data = options.get("train", {}), options.get("datasets", {}).get("train", {})
    out = []
    kind, gamma = train.get("G_scheduler_type"), train.get("G_scheduler_gamma")
    early = [m for m in train.get("G_scheduler_milestones") or [] if m <= iterations]
    if kind not in (None, "MultiStepLR"):
        out.append(f"published config: train.G_scheduler_type {kind!r} is not read; the learning rate stays constant")
    elif early and gamma not in (None, 1):
        out.append(
            f"published config: train.G_scheduler_milestones {early} fall within the {iterations} iterations, but the "
            f"scheduler is not read: the learning rate stays constant instead of being multiplied by "
            f"G_scheduler_gamma {gamma} at each"
        )
    if train.get("G_optimizer_type") not in (None, "adam"):
        out.append(f"published config: train.G_optimizer_type {train['G_optimizer_type']!r} is not read; we use Adam")
    if train.get("G_optimizer_wd") not in (None, 0):
        out.append(f"published config: train.G_optimizer_wd {train['G_optimizer_wd']} is not read; Adam has no decay")
    if train.get("G_optimizer_betas") not in (None, [0.9, 0.999]):
        out.append(f"published config: train.G_optimizer_betas {train['G_optimizer_betas']} is not read; Adam uses "
                   "(0.9, 0.999)")  # fmt: skip
    if data.get("dataset_type") not in (None, "mixed_equal"):
        out.append(f"published config: datasets.train.dataset_type {data['dataset_type']!r} is not read; we train as "
                   "mixed_equal, one batch per task at every step")  # fmt: skip
    return out
