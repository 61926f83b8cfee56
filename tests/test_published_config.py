"""The trainer's translation of the real published ``config.json`` (../shared/published beside the repository).

Every value is compared with the file as read here, independently of the package's parser. Most published values
equal our defaults (lr, EMA, FAMO, iterations, batch, crop...), so comparing values cannot tell a key that is read
from one that is ignored: each claimed key is also changed in a copy of the file's options and must follow.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import re
import warnings
from pathlib import Path

import pytest

from tita_fast.nn import TITA
from tita_fast.train.config import (
    _PUBLISHED_DATA,
    _PUBLISHED_TRAIN,
    TrainConfig,
    from_published,
    load_config,
    published_unread,
    read_file,
)
from tita_fast.train.data import DataError, PairSource, TaskPairs

from .conftest import SHARED

PUBLISHED = SHARED / "published" / "config.json"
ROOT = Path(__file__).resolve().parents[1]

# What the translation claims to read (README "Training", the config module): published key -> our field.
TRAIN_KEYS = {
    "G_optimizer_lr": "lr", "E_decay": "ema_decay", "gamma": "famo_gamma", "method_params_lr": "famo_w_lr",
    "manual_seed": "seed", "iteration": "iterations", "checkpoint_save": "checkpoint_every",
    "checkpoint_print": "log_every", "G_lossfn_weight": "loss_weight",
}  # fmt: skip
DATA_KEYS = {"patch_size": "crop_size", "dataloader_batch_size": "batch_size", "dataloader_num_workers": "workers"}
# netG keys that are TITA arguments; the others are not network arguments (net_type, init_type) or are taken and
# ignored by the published network (depths, num_heads: its stages are Ex/Fusion/Re_depths, fixed by default).
MODEL_KEYS = {"upscale", "in_chans", "img_size", "window_size", "img_range", "embed_dim", "mlp_ratio", "upsampler",
              "resi_connection"}  # fmt: skip
NOT_MODEL_KEYS = {"net_type", "init_type", "depths", "num_heads"}
SCHEDULER_KEYS = {"G_scheduler_type", "G_scheduler_milestones", "G_scheduler_gamma"}
PUBLISHED_PARAMETERS = 1_386_865  # the published network (spec)


def strip_comments(text: str) -> str:
    """``//`` comments dropped, a character scanner that skips JSON strings (escapes included)."""
    out, i, in_string = [], 0, False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(text[i : i + 2] if char == "\\" else char)
            i += 2 if char == "\\" else 1
            in_string = char != '"'
        elif char == '"':
            out.append(char)
            in_string, i = True, i + 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        else:
            out.append(char)
            i += 1
    return "".join(out)


@pytest.fixture(scope="module")
def options() -> dict:
    if not PUBLISHED.exists():
        pytest.skip(f"{PUBLISHED} is absent (the published config.json lives in ../shared/published beside the repo)")
    return json.loads(strip_comments(PUBLISHED.read_text()))


def translate(options: dict) -> TrainConfig:
    return TrainConfig.from_dict(from_published(options))


def test_comment_stripper_of_the_test():
    text = '{"a": "http://x//y", "b": "q\\"//not", // gone\n "c": 1} // end'
    assert json.loads(strip_comments(text)) == {"a": "http://x//y", "b": 'q"//not', "c": 1}


def test_the_package_reads_the_file_as_written(options):
    assert "//" in PUBLISHED.read_text()  # the real file carries comments
    assert read_file(PUBLISHED) == options


def test_real_file_translates_to_what_it_says(options):
    train, data, net, path = options["train"], options["datasets"]["train"], options["netG"], options["path"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing the file sets goes unread in a way that changes the training
        config = load_config(PUBLISHED)
    defaults = TrainConfig(tasks=config.tasks)

    # Tasks in the file's order (the published loaders and FAMO weights follow it); the published code pairs loss
    # types with tasks by position, which is by name here since both sections list the tasks in the same order.
    assert list(config.tasks) == list(data["trainsets"])
    assert list(train["G_lossfn_types"]) == list(data["trainsets"])
    for task, sets in data["trainsets"].items():
        assert config.tasks[task].loss == train["G_lossfn_types"][task]
        expected = [
            (spec["task_path"], spec["subdir1"], spec["subdir2"], "realmff" if name == "RealMFF" else None)
            for name, spec in sets.items()
        ]
        assert [(s.task_path, s.subdir1, s.subdir2, s.name_map) for s in config.tasks[task].sources] == expected
    assert "RealMFF" in data["trainsets"]["MFIF"]
    # The published loader's RealMFF partner: fname.split('_')[0] + '_A.png'.
    realmff = PairSource("/d", "a", "b", "realmff")
    for name in ("17_B.png", "17_2_B.png", "0001_x.jpg"):
        assert realmff.partner(name) == name.split("_")[0] + "_A.png"

    for key, ours in TRAIN_KEYS.items():
        assert getattr(config, ours) == train[key], key
    for key, ours in DATA_KEYS.items():
        assert getattr(config, ours) == data[key], key
    assert config.model == {k: net[k] for k in MODEL_KEYS}
    assert set(net) == MODEL_KEYS | NOT_MODEL_KEYS
    assert config.init_weights == path["pretrained_netG"]
    assert config.out_dir == os.path.join(path["root"], options["task"])

    translated = {"tasks", "model", "init_weights", "out_dir", *TRAIN_KEYS.values(), *DATA_KEYS.values()}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in translated:  # the rest is ours, at its default (no flips: the published loader has none)
            assert getattr(config, f.name) == getattr(defaults, f.name), f.name


def test_every_claimed_key_is_read(options):
    # The test's list is the package's list: a key added to the translation needs a line here.
    assert (_PUBLISHED_TRAIN, _PUBLISHED_DATA) == (TRAIN_KEYS, DATA_KEYS)
    assert set(TRAIN_KEYS) <= set(options["train"]) and set(DATA_KEYS) <= set(options["datasets"]["train"])
    base = translate(options)
    changed = {
        "G_optimizer_lr": 3e-4, "E_decay": 0.99, "gamma": 0.01, "method_params_lr": 0.5, "manual_seed": 5,
        "iteration": 123, "checkpoint_save": 7, "checkpoint_print": 3, "G_lossfn_weight": 2.5,
        "patch_size": 48, "dataloader_batch_size": 2, "dataloader_num_workers": 1,
    }  # fmt: skip
    for key, value in changed.items():
        edited = copy.deepcopy(options)
        section = edited["train"] if key in TRAIN_KEYS else edited["datasets"]["train"]
        assert section[key] != value
        section[key] = value
        field = TRAIN_KEYS.get(key) or DATA_KEYS[key]
        assert getattr(translate(edited), field) == value, key

    for key, value in {"embed_dim": 48, "window_size": 4, "img_size": 64, "mlp_ratio": 4.0, "in_chans": 3}.items():
        edited = copy.deepcopy(options)
        edited["netG"][key] = value
        assert translate(edited).model == {**base.model, key: value}, key

    edited = copy.deepcopy(options)
    edited["train"]["G_lossfn_types"]["IVIF"] = "mef"
    assert translate(edited).tasks["IVIF"].loss == "mef"
    edited["datasets"]["train"]["trainsets"]["IVIF"]["LLVIP"]["subdir1"] = "vi"
    assert translate(edited).tasks["IVIF"].sources[0].subdir1 == "vi"
    edited["path"].update(pretrained_netG="/w/G.pth", root="runs")
    edited["task"] = "again"
    assert (translate(edited).init_weights, translate(edited).out_dir) == ("/w/G.pth", os.path.join("runs", "again"))


def test_unread_scheduler_is_documented_and_warned_when_it_would_matter(options):
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the training guide has moved before
    said = [p.name for p in docs if p.exists() and "scheduler options are not read" in " ".join(p.read_text().split())]
    assert said, "the documentation should say that the published scheduler options are not read"
    assert SCHEDULER_KEYS <= set(options["train"])

    # Not read: another schedule translates to the same configuration.
    edited = copy.deepcopy(options)
    edited["train"].update(G_scheduler_milestones=[10], G_scheduler_gamma=0.1)
    assert translate(edited) == translate(options)
    # Harmless as published: every milestone lies past the iterations, the published rate never decays.
    assert min(options["train"]["G_scheduler_milestones"]) > options["train"]["iteration"]
    assert published_unread(options, options["train"]["iteration"]) == []
    # Run longer, and the file's own first milestone would fall inside the run: say so.
    first = min(options["train"]["G_scheduler_milestones"])
    with pytest.warns(UserWarning, match=rf"G_scheduler_milestones \[{first}\] fall within .* not read"):
        config = load_config(PUBLISHED, [f"iterations={first}"])
    assert config.iterations == first

    for section, key, value in [
        ("train", "G_scheduler_type", "CosineAnnealingWarmRestarts"), ("train", "G_optimizer_type", "sgd"),
        ("train", "G_optimizer_wd", 1e-4), ("train", "G_optimizer_betas", [0.5, 0.9]),
        ("datasets", "dataset_type", "mixed"),
    ]:  # fmt: skip
        edited = copy.deepcopy(options)
        (edited["train"] if section == "train" else edited["datasets"]["train"])[key] = value
        messages = published_unread(edited, 20000)
        assert len(messages) == 1 and key in messages[0], (key, messages)


def test_config_needs_no_data_and_builds_the_published_network(options):
    config = load_config(PUBLISHED)
    params = set(inspect.signature(TITA).parameters)
    assert MODEL_KEYS <= params and not NOT_MODEL_KEYS & params
    model = TITA(**config.model)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS
    assert sum(p.numel() for p in TITA().parameters()) == PUBLISHED_PARAMETERS

    # The datasets are not here: the configuration is still made; the data check names the missing folders.
    sources = config.tasks["MFIF"].sources
    if any(s.folder1.exists() for s in sources):
        pytest.skip("the published training data exist here; the missing-data report is tested elsewhere")
    with pytest.raises(DataError, match=re.escape(os.fspath(sources[0].folder1))):
        TaskPairs("MFIF", sources)
