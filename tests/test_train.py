"""The trainer and ``tita-fast train``: end to end, exact resume, checkpoints, configs, data parallel (gloo)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tita_fast import TITA
from tita_fast.cli import main
from tita_fast.train.config import TrainConfig, load_config
from tita_fast.train.synthetic import make_pairs
from tita_fast.train.trainer import Trainer

from .conftest import SHARED

DATA = SHARED / "data"
# A small TITA (one block per stage, 12 channels, window 4) so that a step takes milliseconds; no stochastic depth
# so that runs on different numbers of processes can be compared.
TINY_MODEL = {
    "img_size": 16, "window_size": 4, "embed_dim": 12, "Ex_depths": [1], "Fusion_depths": [1], "Re_depths": [1],
    "Ex_num_heads": [2], "Fusion_num_heads": [2], "Re_num_heads": [2], "mlp_ratio": 1.0, "drop_path_rate": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Synthetic multi-focus and multi-exposure pairs (and a copy of the latter as a third 'ivif' task) made with
    our pair makers from generated photos."""
    root = tmp_path_factory.mktemp("pairs")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48]
    for i in range(3):
        base = 127 + 80 * np.sin(xx / (3 + i)) * np.cos(yy / (4 + i)) + rng.normal(0, 10, (40, 48))
        rgb = np.stack([base, np.roll(base, i + 1, 0), base[::-1]], -1)
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(photos / f"photo{i}.png")
    for kind in ("mff", "mef"):
        make_pairs(kind, photos, root / kind, seed=1)
    return root


def tiny_config(pairs: Path, out: Path, **settings) -> dict:
    tasks = {
        name: {"loss": loss, "sources": [{"task_path": os.fspath(pairs / folder), "subdir1": "a", "subdir2": "b"}]}
        for name, loss, folder in (("ivif", "vif", "mef"), ("mef", "mef", "mef"), ("mff", "mff", "mff"))
    }
    config = {"tasks": tasks, "model": TINY_MODEL, "out_dir": os.fspath(out), "iterations": 4, "batch_size": 2,
              "crop_size": 16, "lr": 1e-3, "log_every": 1, "checkpoint_every": 2, "progress": False}  # fmt: skip
    config.update(settings)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def read_log(run: Path) -> list[dict]:
    with (run / "log.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_cli_train_end_to_end_on_synthetic_pairs(pairs, tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path / "config.json", tiny_config(pairs, run))
    assert main(["train", "--config", os.fspath(config)]) == 0
    assert "trained to step 4" in capsys.readouterr().out
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for row in rows:
        weights = [float(row[f"weight_{t}"]) for t in ("ivif", "mef", "mff")]
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
        assert all(float(row[f"loss_{t}"]) > 0 for t in ("ivif", "mef", "mff"))
    assert rows[0]["weight_ivif"] != rows[-1]["weight_ivif"], "FAMO weights should move"
    assert (run / "curves.png").stat().st_size > 1000
    with Image.open(run / "curves.png") as image:
        assert image.format == "PNG"
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_00000004"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    assert sorted(p.name for p in (checkpoints / "step_00000004").iterdir()) == [
        "ema.safetensors", "model.safetensors", "state.pt"]  # fmt: skip
    assert json.loads((run / "config.json").read_text())["model"] == TINY_MODEL
    # written through private temporary files, but left with ordinary permissions
    umask = os.umask(0)
    os.umask(umask)
    for path in (run / "log.csv", run / "curves.png", checkpoints / "latest", checkpoints / "step_00000004"):
        mode = 0o777 if path.is_dir() else 0o666
        assert path.stat().st_mode & 0o777 == mode & ~umask, path


def test_checkpoint_rebuilds_model_without_arguments(pairs, tmp_path):
    trainer = Trainer(TrainConfig.from_dict(tiny_config(pairs, tmp_path / "run", iterations=2)))
    trainer.fit()
    ema = TITA.from_checkpoint(tmp_path / "run/checkpoints/step_00000002/ema.safetensors")
    assert ema.config == trainer.ema.config
    for (name, value), expected in zip(ema.state_dict().items(), trainer.ema.state_dict().values(), strict=True):
        assert torch.equal(value, expected), name
    # the EMA moved from the initial weights, by less than the trained model did
    live = dict(trainer.model.named_parameters())
    first = "conv_first1_A.weight"
    torch.manual_seed(0)
    initial = TITA(**TINY_MODEL).state_dict()[first]
    assert 0 < (ema.state_dict()[first] - initial).abs().max() < (live[first].detach() - initial).abs().max()


@pytest.mark.parametrize("famo_update", ["faithful", "fast"])
def test_resume_is_bit_identical(pairs, tmp_path, famo_update):
    straight = Trainer(TrainConfig.from_dict(tiny_config(pairs, tmp_path / "straight", famo_update=famo_update)))
    straight.fit()

    config = tiny_config(pairs, tmp_path / "split", famo_update=famo_update)
    Trainer(TrainConfig.from_dict({**config, "iterations": 2})).fit()
    resumed = Trainer(TrainConfig.from_dict(config), resume=True, overrides=["iterations=4"])
    assert resumed.step == 2
    resumed.fit()

    for a, b in ((straight.model, resumed.model), (straight.ema, resumed.ema)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name
    assert torch.equal(straight.famo.w, resumed.famo.w)
    assert read_log(tmp_path / "straight") == read_log(tmp_path / "split")


def test_resume_refusals(pairs, tmp_path):
    config = TrainConfig.from_dict(tiny_config(pairs, tmp_path / "run", iterations=2))
    Trainer(config).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config)
    with pytest.raises(ValueError, match=r"\['lr'\] cannot change"):
        Trainer(config, resume=True, overrides=["lr=0.1"])
    with pytest.raises(FileNotFoundError, match="no state.pt"):
        Trainer(config, resume=tmp_path / "nowhere")


def test_cli_resume_from_run_directory(pairs, tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path / "config.json", tiny_config(pairs, run, iterations=2))
    assert main(["train", "--config", os.fspath(config)]) == 0
    assert main(["train", "--resume", "--out", os.fspath(run), "--iterations", "3"]) == 0
    assert "trained to step 3" in capsys.readouterr().out
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3]
    assert main(["train", "--resume", "--out", os.fspath(run), "--set", "batch_size=4"]) == 2
    assert "cannot change" in capsys.readouterr().err


def test_cli_errors_are_messages(tmp_path, capsys):
    assert main(["train"]) == 2
    assert "give --config" in capsys.readouterr().err
    missing = write_config(tmp_path / "c.json", {"tasks": {"mff": {"sources": [
        {"task_path": os.fspath(tmp_path / "absent"), "subdir1": "a", "subdir2": "b"}]}}})  # fmt: skip
    assert main(["train", "--config", os.fspath(missing), "--out", os.fspath(tmp_path / "run")]) == 2
    assert "absent" in capsys.readouterr().err
    bad = write_config(tmp_path / "bad.json", {"tasks": {}, "learning_rate": 1})
    assert main(["train", "--config", os.fspath(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        textwrap.dedent("""
        tasks:
          mff: {loss: mff, sources: [{task_path: /data/mff, subdir1: far, subdir2: near, name_map: realmff}]}
        iterations: 100
    """)
    )
    config = load_config(path, ["iterations=7", "precision=bf16", "model.embed_dim=12"])
    assert (config.iterations, config.precision, config.model, config.batch_size) == (7, "bf16", {"embed_dim": 12}, 8)
    assert config.tasks["mff"].sources[0].name_map == "realmff"
    with pytest.raises(ValueError, match="precision must be one of"):
        load_config(path, ["precision=fp8"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(path, ["iterations"])


def test_published_config_json_is_translated(tmp_path):
    """The published training options (KAIR style, // comments) map onto ours."""
    path = tmp_path / "config.json"
    path.write_text(
        textwrap.dedent("""
        {
          "task": "TITA"  // run name
          , "model": "plain"
          , "path": {"root": "experiments", "pretrained_netG": null}
          , "datasets": {
              "train": {
                "name": "train_dataset", "dataset_type": "mixed_equal"
                , "trainsets": {
                    "IVIF": {"LLVIP": {"task_path": "http://not-a-comment/LLVIP", "subdir1": "ir", "subdir2": "vi"}}
                  , "MEIF": {"SICE": {"task_path": "/d/SICE", "subdir1": "over", "subdir2": "under"}}
                  , "MFIF": {"RealMFF": {"task_path": "/d/RealMFF", "subdir1": "A", "subdir2": "B"},
                             "MFI-WHU": {"task_path": "/d/MFI-WHU", "subdir1": "A", "subdir2": "B"}}
                }
                , "patch_size": 64, "dataloader_shuffle": true, "dataloader_batch_size": 8
                , "dataloader_num_workers": 4
              }
            }
          , "netG": {"net_type": "TITA", "in_chans": 1, "img_size": 128, "window_size": 8, "embed_dim": 60,
                     "init_type": "default"}
          , "train": {
              "G_lossfn_types": {"IVIF": "vif", "MEIF": "mef", "MFIF": "mff"}
            , "G_lossfn_weight": 1.0, "E_decay": 0.999, "G_optimizer_lr": 2e-5  // Adam
            , "gamma": 0.001, "method_params_lr": 0.025, "iteration": 20000, "manual_seed": 42
            , "checkpoint_save": 5000, "checkpoint_print": 200, "epoch": 1000000
          }
        }
    """)
    )
    config = load_config(path)
    assert list(config.tasks) == ["IVIF", "MEIF", "MFIF"]
    assert [t.loss for t in config.tasks.values()] == ["vif", "mef", "mff"]
    assert config.tasks["IVIF"].sources[0].task_path == "http://not-a-comment/LLVIP"
    realmff, whu = config.tasks["MFIF"].sources
    assert (realmff.name_map, whu.name_map) == ("realmff", None)
    assert (config.lr, config.ema_decay, config.famo_gamma, config.famo_w_lr) == (2e-5, 0.999, 1e-3, 0.025)
    assert (config.iterations, config.seed, config.checkpoint_every, config.log_every) == (20000, 42, 5000, 200)
    assert (config.crop_size, config.batch_size, config.workers) == (64, 8, 4)
    assert config.model == {"in_chans": 1, "img_size": 128, "window_size": 8, "embed_dim": 60}
    assert config.out_dir == os.path.join("experiments", "TITA")


def test_train_on_shared_data(tmp_path):
    """A few steps on the real pairs (gray and colour sources, three tasks)."""
    if not DATA.exists():
        pytest.skip(f"{DATA} is absent (real test pairs live in ../shared/data beside the repository)")
    tasks = {
        "ivif": {"loss": "vif", "sources": [{"task_path": os.fspath(DATA / "ivif/roadscene_u2f"), "subdir1": "a",
                                             "subdir2": "b"}]},
        "mef": {"loss": "mef", "sources": [{"task_path": os.fspath(DATA / "mef/u2f_set1"), "subdir1": "a",
                                            "subdir2": "b"}]},
        "mff": {"loss": "mff", "sources": [{"task_path": os.fspath(DATA / f"mff/{s}"), "subdir1": "a", "subdir2": "b"}
                                           for s in ("u2f", "gifnet")]},
    }  # fmt: skip
    config = {**tiny_config(DATA, tmp_path / "run", iterations=2), "tasks": tasks, "crop_size": 32}
    assert main(["train", "--config", os.fspath(write_config(tmp_path / "config.json", config))]) == 0
    last = read_log(tmp_path / "run")[-1]
    assert all(np.isfinite(float(last[f"loss_{t}"])) and float(last[f"loss_{t}"]) > 0 for t in ("ivif", "mef", "mff"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_trains(pairs, tmp_path, precision):
    config = tiny_config(pairs, tmp_path / "run", iterations=2, precision=precision)
    trainer = Trainer(TrainConfig.from_dict(config))
    losses = trainer.fit()
    assert all(np.isfinite(v) for v in losses.values())
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_cli_synth_makes_trainable_pairs(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(photos / f"p{i}.jpg")
    assert main(["synth", "mef", os.fspath(photos), os.fspath(tmp_path / "mef")]) == 0
    assert "wrote 2 mef pairs" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "mef/a").iterdir()) == ["p0.png", "p1.png"]
    assert main(["synth", "mef", os.fspath(photos), os.fspath(tmp_path / "mef")]) == 2
    assert "not empty" in capsys.readouterr().err


DDP_SCRIPT = """
import json, os, sys, torch
from tita_fast.train.config import TrainConfig
from tita_fast.train.trainer import Trainer
trainer = Trainer(TrainConfig.from_dict(json.loads(open(sys.argv[1]).read())))
trainer.fit()
torch.save({"w": trainer.famo.w.detach(), "model": trainer.model.state_dict()}, sys.argv[2] + os.environ["RANK"])
"""


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_data_parallel_matches_one_process_with_the_combined_batch(pairs, tmp_path):
    """Two gloo ranks with batch 2 each against one process with batch 4: same FAMO logits on both ranks (bit
    for bit), and weights equal to the single process's within float32 reduction-order differences.

    Every task uses the mef loss here: a mean over pixels, so the mean of two half-batch losses is the loss of the
    whole batch. The vif and mff losses weigh SSIM by gradient means over the batch, which each rank takes over
    its own share (as the published code does per GPU): a different, not comparable, objective."""
    config = tiny_config(pairs, tmp_path / "ddp", iterations=3, checkpoint_every=10)
    for task in config["tasks"].values():
        task["loss"] = "mef"
    (tmp_path / "script.py").write_text(DDP_SCRIPT)
    write_config(tmp_path / "ddp.json", config)
    result = torchrun(os.fspath(tmp_path / "script.py"), os.fspath(tmp_path / "ddp.json"), os.fspath(tmp_path / "r"))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"r{i}", weights_only=True) for i in (0, 1)]
    assert torch.equal(ranks[0]["w"], ranks[1]["w"])
    for name, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][name]), name

    single = Trainer(TrainConfig.from_dict({**config, "batch_size": 4, "out_dir": os.fspath(tmp_path / "single")}))
    single.fit()
    # Float32 sums in another order differ by ~1e-7 relative; through three Adam steps of lr 1e-3 (each step moves
    # a weight by <= ~lr) that leaves differences far below one step: 1e-5 is 1% of a step.
    torch.testing.assert_close(ranks[0]["w"], single.famo.w.detach(), rtol=0, atol=1e-5)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["model"][name], value, rtol=0, atol=1e-5, msg=name)
    assert read_log(tmp_path / "ddp")[-1].keys() == read_log(tmp_path / "single")[-1].keys()
    assert not (tmp_path / "ddp" / "log.csv").read_text().count("\n") > 4, "only rank 0 writes"


def test_torchrun_cli(pairs, tmp_path):
    run = tmp_path / "run"
    config = write_config(tmp_path / "config.json", tiny_config(pairs, run, iterations=2))
    result = torchrun("-m", "tita_fast", "train", "--config", os.fspath(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained to step 2") == 1, result.stdout  # rank 0 reports
    assert (run / "checkpoints/step_00000002/ema.safetensors").exists()


def test_from_checkpoint_refuses_a_corrupt_safetensors_file(tmp_path):
    path = tmp_path / "ema.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        TITA.from_checkpoint(path)


def test_init_weights_starts_training_from_saved_weights(pairs, tmp_path):
    """Fine-tuning: model and EMA start from the file (exported EMA weights of another run); a file of another
    architecture is refused with the mismatch named; the published option path.pretrained_netG maps onto it."""
    first = Trainer(TrainConfig.from_dict(tiny_config(pairs, tmp_path / "first", iterations=2)))
    first.fit()
    weights = sorted((tmp_path / "first" / "checkpoints").glob("*/ema.safetensors"))[-1]
    tuned = Trainer(TrainConfig.from_dict(tiny_config(pairs, tmp_path / "tuned", init_weights=os.fspath(weights))))
    saved = TITA.from_checkpoint(weights).state_dict()
    for module in (tuned.model, tuned.ema):
        assert all(torch.equal(t, saved[k]) for k, t in module.state_dict().items())
    assert tuned.step == 0
    fresh = Trainer(TrainConfig.from_dict(tiny_config(pairs, tmp_path / "fresh")))
    assert not torch.equal(fresh.model.conv_first1_A.weight, tuned.model.conv_first1_A.weight)
    wider = tiny_config(pairs, tmp_path / "wider", init_weights=os.fspath(weights))
    wider["model"] = {**TINY_MODEL, "embed_dim": 18}
    with pytest.raises(ValueError, match=r"does not fit the configured model: \d+ tensors differ, e.g. conv_first1_A.weight \(file vs model: \(6, 1, 3, 3\) vs \(9, 1, 3, 3\)\)"):
        Trainer(TrainConfig.from_dict(wider))
    published = {"datasets": {"train": {"trainsets": {"IVIF": {"X": {"task_path": "/d", "subdir1": "a",
                                                                     "subdir2": "b"}}}}},
                 "path": {"pretrained_netG": "/w/G.pth"}, "train": {}}  # fmt: skip
    from tita_fast.train.config import from_published

    assert from_published(published)["init_weights"] == "/w/G.pth"


def test_metric_terms_reach_the_task_losses(pairs, tmp_path):
    """qabf_weight (vif_weight takes the same path) reaches every task loss: the first step's losses are the
    published ones plus the term, on the same batch and the same initial weights."""
    run = Trainer(TrainConfig.from_dict(tiny_config(pairs, tmp_path / "run", qabf_weight=2.0)))
    published = Trainer(TrainConfig.from_dict(tiny_config(pairs, tmp_path / "published")))
    assert [(loss.vif_weight, loss.qabf_weight) for loss in run.losses] == [(0.0, 2.0)] * 3
    with_terms, without = run.train_step()[0], published.train_step()[0]
    extra = with_terms - without
    assert torch.all(extra > 0) and torch.all(extra < 2), extra  # 2 (1 - Qabf), Qabf in (0, 1)
    assert all(math.isfinite(v) for v in run.fit().values())
