"""``tita-fast demo``: fuse demo pairs made from a photo that matplotlib ships (no dataset, no network).

From ``grace_hopper.jpg`` (matplotlib's sample data) it makes a multi-focus pair (complementary blurred regions)
and a multi-exposure pair (over/under exposed), fuses each with the default model, and writes
``<out>/<kind>.png`` — sources and result side by side — plus ``<out>/metrics.json`` with the model's and pixel
averaging's metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from tita_fast import fuse, imageio
from tita_fast.color import luminance_and_chroma
from tita_fast.metrics import evaluate
from tita_fast.train.synthetic import multiexposure_pair, multifocus_pair

PAIRS = {"multi-focus": multifocus_pair, "multi-exposure": multiexposure_pair}
SHOWN_METRICS = ("Qabf", "VIF", "SSIM", "MI", "EN")
LABEL_HEIGHT = 18


def sample_photo() -> Image.Image:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
        return photo.convert("RGB")


def side_by_side(images: list[Image.Image], labels: list[str]) -> Image.Image:
    """The images in a row, each under a caption, on white."""
    width, height = images[0].size
    sheet = Image.new("RGB", (width * len(images), height + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        sheet.paste(image.convert("RGB"), (i * width, LABEL_HEIGHT))
        draw.text((i * width + 4, 3), label, fill="black")
    return sheet


def run(out: str | os.PathLike, checkpoint=None, device=None, overwrite: bool = False) -> dict[str, dict]:
    """Make, fuse and score the demo pairs; returns {pair kind: {"TITA": metrics, "average": metrics}}."""
    out = Path(out)
    targets = [out / f"{kind}.png" for kind in PAIRS] + [out / "metrics.json"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} exist(s) (pass --overwrite to replace)")
    model = fuse.load_model(checkpoint, device)
    photo = sample_photo()
    scores = {}
    out.mkdir(parents=True, exist_ok=True)
    for kind, make_pair in PAIRS.items():
        a, b = make_pair(photo, np.random.default_rng(0))
        fused = fuse.fuse(a, b, model)
        luma = [luminance_and_chroma(imageio.from_pil(x)[0])[0] for x in (a, b, fused)]
        average = torch.round((luma[0] + luma[1]) / 2)
        scores[kind] = {
            "TITA": evaluate(*luma, metrics=SHOWN_METRICS),
            "average": evaluate(luma[0], luma[1], average, metrics=SHOWN_METRICS),
        }
        sheet = side_by_side([a, b, fused], [f"{kind}: A", "B", "TITA (default model)"])
        sheet.save(out / f".{kind}.partial.png")
        os.replace(out / f".{kind}.partial.png", out / f"{kind}.png")
    (out / "metrics.json").write_text(json.dumps(scores, indent=1) + "\n")
    return scores
