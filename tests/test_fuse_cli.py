"""`tita-fast fuse`, `tita-fast eval` and `tita-fast demo` end to end, and their errors."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tita_fast import fuse, metrics
from tita_fast.cli import TABLE_METRICS, main

from .conftest import SHARED

DATA = SHARED / "data"


def shared_set(name: str):
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real pairs live in ../shared/data beside the repository)")
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("name", "mode"),
    [("medical/pet_mri_u2f", "L"), ("mff/gifnet", "RGB"), ("medical/pet_mri_gifnet", "RGB")],
    ids=["gray", "colour", "gray+colour"],
)
def test_fuse_folders_of_shared_pairs(tmp_path, capsys, name, mode):
    pairs = shared_set(name)
    code, out, err = run_cli(capsys, "fuse", pairs / "a", pairs / "b", "-o", tmp_path / "out", "--batch", 2)
    assert code == 0, err
    sources = sorted((pairs / "a").iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{p.stem}.png" for p in sources)
    assert f"fused {len(sources)} pair(s)" in out
    for source in sources:
        with Image.open(tmp_path / "out" / f"{source.stem}.png") as written, Image.open(source) as original:
            assert written.mode == mode and written.size == original.size
            expected = fuse.fuse(source, pairs / "b" / source.name)  # the API gives what the CLI writes
            # batches of 2 change the float32 summation order: a value may round to the neighbouring level
            difference = np.abs(np.asarray(written, np.int16) - np.asarray(expected, np.int16))
            assert difference.max() <= 1 and difference.mean() < 0.01


def test_fuse_sixteen_bit_files(tmp_path, capsys):
    band = shared_set("remote/gifnet")
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        for path in sorted((band / side).iterdir())[:2]:
            pixels = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257
            pixels[::2] += 100  # values between the 8-bit levels
            Image.fromarray(pixels).save(tmp_path / side / f"{path.stem}.tif")
    code, _, err = run_cli(capsys, "fuse", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out", "--format", "tif")
    assert code == 0, err
    for path in sorted((tmp_path / "a").iterdir()):
        with Image.open(tmp_path / "out" / path.name) as written:
            assert written.mode.startswith("I;16")
            values = np.asarray(written)
            assert values.max() > 255 and np.any(values % 257)  # 16-bit levels, not 8-bit scaled


def test_fuse_single_pair_to_a_file_and_overwrite(tmp_path, capsys):
    Image.fromarray(np.full((20, 24), 50, np.uint8)).save(tmp_path / "ir.png")
    Image.fromarray(np.full((20, 24), 200, np.uint8)).save(tmp_path / "vis.jpg")
    target = tmp_path / "fused.png"
    assert run_cli(capsys, "fuse", tmp_path / "ir.png", tmp_path / "vis.jpg", "-o", target)[0] == 0
    assert Image.open(target).size == (24, 20)
    code, _, err = run_cli(capsys, "fuse", tmp_path / "ir.png", tmp_path / "vis.jpg", "-o", target)
    assert code == 2 and "exists (pass --overwrite" in err
    assert run_cli(capsys, "fuse", tmp_path / "ir.png", tmp_path / "vis.jpg", "-o", target, "--overwrite")[0] == 0


def test_fuse_tiled_cli_matches_api(tmp_path, capsys):
    pairs = shared_set("medical/pet_mri_u2f")
    code, _, err = run_cli(capsys, "fuse", pairs / "a" / "1.png", pairs / "b" / "1.png", "-o", tmp_path / "t.png",
                           "--tile", 128, "--overlap", 32)  # fmt: skip
    assert code == 0, err
    expected = fuse.fuse(pairs / "a" / "1.png", pairs / "b" / "1.png", tile=128, overlap=32)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t.png")), np.asarray(expected))


def test_console_script_runs(tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    done = subprocess.run([sys.executable, "-m", "tita_fast", "fuse", tmp_path / "a.png", tmp_path / "a.png",
                           "-o", tmp_path / "out"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.png").exists()


# ------------------------------------------------------------------------------------------------ errors
def folders(tmp_path, a: dict, b: dict):
    for side, files in (("a", a), ("b", b)):
        (tmp_path / side).mkdir()
        for name, content in files.items():
            if isinstance(content, bytes):
                (tmp_path / side / name).write_bytes(content)
            else:
                Image.fromarray(np.zeros(content, np.uint8)).save(tmp_path / side / name)
    return tmp_path / "a", tmp_path / "b"


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ({"x.png": (10, 10)}, {"x.png": (10, 12)}, "x: .* is 10x10 but .* is 12x10"),
        ({"1.png": (8, 8), "2.png": (8, 8)}, {"1.png": (8, 8)}, "no image for 1 name.*: 2"),
        ({}, {"1.png": (8, 8)}, "no image files"),
        ({"x.png": b"hello, not an image"}, {"x.png": (8, 8)}, "x.png: not a readable image"),
        ({"x.png": (8, 8), "x.jpg": (8, 8)}, {"x.png": (8, 8)}, "two images named 'x'"),
    ],
    ids=["sizes", "unmatched", "empty", "non-image", "duplicate"],
)
def test_fuse_refuses_bad_folders(tmp_path, capsys, a, b, message):
    folder_a, folder_b = folders(tmp_path, a, b)
    code, _, err = run_cli(capsys, "fuse", folder_a, folder_b, "-o", tmp_path / "out")
    assert code == 2 and re.search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing written


def test_truncated_file_fails_alone(tmp_path, capsys):
    images = {"1.png": (64, 64), "2.png": (64, 64)}
    folder_a, folder_b = folders(tmp_path, images, images)
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # incompressible: truncation bites
    Image.fromarray(noisy).save(folder_a / "2.png")
    data = (folder_a / "2.png").read_bytes()
    (folder_a / "2.png").write_bytes(data[: len(data) // 2])
    code, out, err = run_cli(capsys, "fuse", folder_a, folder_b, "-o", tmp_path / "out")
    assert code == 1 and "2: " in err and "not a readable image" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["1.png"]  # no partial file for pair 2


def test_fuse_refuses_bad_models_devices_and_backends(tmp_path, capsys):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x01" * 64)
    save_file(torch.nn.Linear(2, 2).state_dict(), str(tmp_path / "other.safetensors"))
    base = ["fuse", tmp_path / "a.png", tmp_path / "a.png", "-o", tmp_path / "out"]
    cases = [(["--checkpoint", tmp_path / "corrupt.safetensors"], "not a readable"),
             (["--checkpoint", tmp_path / "other.safetensors"], "not a checkpoint of TITA"),
             (["--checkpoint", tmp_path / "missing.pth"], "no such checkpoint"),
             (["--backend", "nonsense"], "unknown tita_fast backend"),
             (["--batch", "0"], "batch must be")]  # fmt: skip
    if not torch.cuda.is_available():
        cases += [(["--device", "cuda"], "no CUDA device"), (["--backend", "cuda"], "not available")]
    for extra, message in cases:
        code, _, err = run_cli(capsys, *base, *extra)
        assert code == 2 and message in err, (extra, err)
        assert not (tmp_path / "out" / "a.png").exists()


# -------------------------------------------------------------------------------------------------- eval
def test_eval_json_csv_and_table(tmp_path, capsys):
    pairs = shared_set("medical/pet_mri_u2f")
    assert run_cli(capsys, "fuse", pairs / "a", pairs / "b", "-o", tmp_path / "fused")[0] == 0
    code, out, _ = run_cli(capsys, "eval", pairs / "a", pairs / "b", tmp_path / "fused", "--json", "--csv",
                           tmp_path / "m.csv")  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["1", "2", "3", "4"]
    assert list(rows[0]) == ["name", "EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "CC", "Nabf"]
    with open(tmp_path / "m.csv") as handle:
        from_csv = list(csv.DictReader(handle))
    assert [float(r["Qabf"]) for r in from_csv] == pytest.approx([r["Qabf"] for r in rows], rel=1e-12)
    code, out, _ = run_cli(capsys, "eval", pairs / "a", pairs / "b", tmp_path / "fused", "--metrics", "qabf,VIF")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["name", "VIF", "Qabf"] and lines[-1].split()[0] == "mean"
    mean = np.mean([r["Qabf"] for r in rows])
    assert float(lines[-1].split()[2]) == pytest.approx(mean, abs=1e-4)


def test_eval_errors(tmp_path, capsys):
    folder_a, folder_b = folders(tmp_path, {"1.png": (12, 12)}, {"1.png": (12, 12)})
    (tmp_path / "f").mkdir()
    Image.fromarray(np.zeros((12, 14), np.uint8)).save(tmp_path / "f" / "1.png")
    code, _, err = run_cli(capsys, "eval", folder_a, folder_b, tmp_path / "f")
    assert code == 2 and "differ in size" in err
    code, _, err = run_cli(capsys, "eval", folder_a, folder_b, folder_a, "--metrics", "bogus")
    assert code == 2 and "unknown metric" in err
    shutil.rmtree(tmp_path / "f")
    code, _, err = run_cli(capsys, "eval", folder_a, folder_b, tmp_path / "f")
    assert code == 2 and "no such file or folder" in err


# -------------------------------------------------------------------------------------------------- demo
def test_demo_writes_pictures_and_metrics(tmp_path, capsys):
    code, out, err = run_cli(capsys, "demo", "-o", tmp_path / "demo")
    assert code == 0, err
    scores = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(scores) == {"multi-focus", "multi-exposure"}
    for kind in scores:
        with Image.open(tmp_path / "demo" / f"{kind}.png") as sheet:
            assert sheet.mode == "RGB" and sheet.size[0] == 3 * 512  # A | B | fused
        assert set(scores[kind]) == {"TITA", "average"} and "Qabf" in scores[kind]["TITA"]
    assert "multi-focus" in out
    code, _, err = run_cli(capsys, "demo", "-o", tmp_path / "demo")
    assert code == 2 and "--overwrite" in err


def test_fuse_refuses_outputs_it_cannot_write(tmp_path, capsys):
    deep = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200
    Image.fromarray(deep).save(tmp_path / "band.tif")
    code, _, err = run_cli(capsys, "fuse", tmp_path / "band.tif", tmp_path / "band.tif", "-o", tmp_path / "o",
                           "--format", "jpg")  # fmt: skip
    assert code == 2 and "16-bit gray" in err and not (tmp_path / "o").exists()
    code, _, err = run_cli(capsys, "fuse", tmp_path / "band.tif", tmp_path / "band.tif", "-o", tmp_path / "band.tif",
                           "--overwrite")  # fmt: skip
    assert code == 2 and "is one of the sources" in err
    (tmp_path / "out" / "band.png").mkdir(parents=True)
    code, _, err = run_cli(capsys, "fuse", tmp_path / "band.tif", tmp_path / "band.tif", "-o", tmp_path / "out",
                           "--overwrite")  # fmt: skip
    assert code == 2 and "is a folder" in err


# ------------------------------------------------------------------------- published pipeline, cddfuse convention
def test_fuse_published_pipeline_cli_matches_api(tmp_path, capsys):
    pairs = shared_set("medical/pet_mri_gifnet")
    a, b = pairs / "a" / "1.png", pairs / "b" / "1.png"
    code, _, err = run_cli(capsys, "fuse", a, b, "-o", tmp_path / "f.png", "--pipeline", "published")
    assert code == 0, err
    expected = fuse.fuse(a, b, pipeline="published")  # up to 4 levels from ours: an ignored option would show
    assert np.array_equal(np.asarray(Image.open(tmp_path / "f.png")), np.asarray(expected))


def test_fuse_published_pipeline_refuses_sixteen_bit_files(tmp_path, capsys):
    Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).save(tmp_path / "band.tif")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "pan.png")
    code, _, err = run_cli(capsys, "fuse", tmp_path / "band.tif", tmp_path / "pan.png", "-o", tmp_path / "out",
                           "--pipeline", "published")  # fmt: skip
    assert code == 2 and "band.tif: a 16-bit image; the published pipeline reads 8-bit images only" in err
    assert not (tmp_path / "out").exists()


def test_eval_cddfuse_convention_and_triples(tmp_path, capsys):
    pairs = shared_set("medical/pet_mri_u2f")
    code, out, err = run_cli(capsys, "eval", pairs / "a", pairs / "b", pairs / "a", "--convention", "cddfuse",
                             "--json")  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert list(rows[0]) == ["name", "EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "MSE", "CC"]
    triple = (pairs / "a", pairs / "b", pairs / "a")
    assert out.strip() == json.dumps(metrics.evaluate_files(*triple, convention="cddfuse"), indent=1)
    assert math.isnan(rows[0]["SCD"])  # FUSED = A: F - A is constant, the evaluator's SCD is NaN
    cases = [
        ((*triple, *triple), "several A B FUSED triples need --table"),
        ((*triple, pairs / "a"), "give the images as triples A B FUSED, got 4 paths"),
        ((*triple, *triple, "--table"), "the FUSED folders of the triples need distinct names"),
        ((*triple, "--convention", "cddfuse", "--metrics", "Nabf"), "unknown metric 'Nabf' in the cddfuse"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, "eval", *argv)
        assert code == 2 and message in err, (argv, err)


def test_reproduce_the_paper_table_recipe(tmp_path, capsys):
    """docs/reproduce.md's commands, on real pairs of each seen task standing in for LLVIP, MEFB and MFFB."""
    stand_ins = {"LLVIP": ("ivif/roadscene_u2f", ["1", "2"]), "MEFB": ("mef/u2f_set1", ["3"]),
                 "MFFB": ("mff/u2f", ["1"])}  # fmt: skip
    triples = []
    for label, (name, stems) in stand_ins.items():
        source = shared_set(name)
        for side in ("a", "b"):
            (tmp_path / label / side).mkdir(parents=True)
            for path in (source / side).iterdir():
                if path.stem in stems:
                    shutil.copy(path, tmp_path / label / side / path.name)
        fused = tmp_path / "results" / label
        code, _, err = run_cli(capsys, "fuse", tmp_path / label / "a", tmp_path / label / "b", "-o", fused,
                               "--pipeline", "published")  # fmt: skip
        assert code == 0, err
        triples += [tmp_path / label / "a", tmp_path / label / "b", fused]
    code, out, err = run_cli(capsys, "eval", *triples, "--convention", "cddfuse", "--table", "--csv",
                             tmp_path / "rows.csv")  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "| data set | EN | SD | SF | AG | MI | SCD | VIF | Qabf | SSIM |"
    assert lines[1] == "|---|" + "---:|" * 9
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["LLVIP", "MEFB", "MFFB"]
    expected = metrics.evaluate_files(*triples[6:], TABLE_METRICS, "cddfuse")  # MFFB
    means = [np.mean([row[k] for row in expected]) for k in TABLE_METRICS]
    assert lines[4] == "| MFFB | " + " | ".join(f"{m:.2f}" for m in means) + " |"
    with open(tmp_path / "rows.csv") as handle:
        assert [row["name"] for row in csv.DictReader(handle)] == ["LLVIP/1", "LLVIP/2", "MEFB/3", "MFFB/1"]
