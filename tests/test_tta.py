"""Test-time augmentation (infer/tta.py) and `convnext eval --holdout`: the flip average against the two views
scored one by one, eval and predict with --tta against that reference, and --holdout against the images a
training run's data.holdout validates on (read from the raw IDX files, not through the project's loader)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import convnext
from convnext.checkpoint import load_model
from convnext.cli import main
from convnext.data.assembly import build_data
from convnext.errors import UsageError
from convnext.infer.predict import Predictor
from convnext.infer.tta import FlipAverage, with_tta
from convnext.train import preset
from convnext.train.evaluate import evaluate_checkpoint

from infer_fixtures import checkpoint, fashion, to_input  # noqa: F401


def reference_flip(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean of the two softmaxes, each view in its own forward pass."""
    with torch.no_grad():
        return (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2


def test_flip_average_is_the_mean_of_the_two_views_distributions():
    torch.manual_seed(0)
    model = convnext.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=5).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        out = FlipAverage(model)(x)
    assert torch.allclose(out.softmax(1), reference_flip(model, x), atol=1e-6)
    # already normalised: the logits are log-probabilities (so cross-entropy reads the averaged distribution)
    assert torch.allclose(out.exp().sum(1), torch.ones(6), atol=1e-5)
    with torch.no_grad():  # an image and its mirror get the same answer
        assert torch.allclose(out, FlipAverage(model)(x.flip(-1)), atol=1e-5)
    # a lopsided model: flipping changes its answer, and TTA lands between the two views
    assert not torch.allclose(model(x).softmax(1), model(x.flip(-1)).softmax(1), atol=1e-3)
    assert with_tta(model, "none") is model and isinstance(with_tta(model, "flip"), FlipAverage)
    with pytest.raises(UsageError, match="--tta='mirror' is not valid; use one of none, flip"):
        with_tta(model, "mirror")


def test_eval_and_predict_with_flip_tta_match_the_two_view_reference(checkpoint, tmp_path):  # noqa: F811
    model = load_model(checkpoint)[0].eval()
    x, y = fashion("t10k")  # the whole test split: a tiny model, seconds
    inputs, labels = to_input(x), torch.from_numpy(y.astype(np.int64))
    n = len(labels)
    probs = reference_flip(model, inputs)
    expected = 100 * (probs.argmax(1) == labels).sum().item() / n
    with torch.no_grad():
        plain = 100 * (model(inputs).argmax(1) == labels).sum().item() / n
    kw = dict(dataset="fashion_mnist", workers=0, device="cpu", batch_size=500)
    r = evaluate_checkpoint(checkpoint, tta="flip", **kw)
    assert r["tta"] == "flip" and r["count"] == n
    # to_input resizes 28 -> 32 px with F.interpolate, eval with transforms.v2: equal to float rounding, which
    # moves a few near-ties of this weak model (1 image without TTA, 4 with): 0.1 points allowed, 3.6 apart below
    tol = 0.1
    assert abs(r["top1"] - expected) <= tol
    assert r["loss"] == pytest.approx(-probs[torch.arange(n), labels].log().mean().item(), rel=1e-4)
    assert abs(r["top1"] - plain) > 1.0  # TTA changes this model's score, so the match above means something
    # the fused copy and TTA compose
    assert abs(evaluate_checkpoint(checkpoint, tta="flip", fast=True, **kw)["top1"] - expected) <= tol
    # predict: the same averaged probabilities, image by image
    from PIL import Image

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(x[i]).save(paths[i])
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", tta="flip", workers=0)
    assert torch.allclose(predictor.probabilities(inputs[:8]), probs[:8], atol=1e-6)
    got = predictor.predict_inputs([str(p) for p in paths], topk=1)
    for i, pred in enumerate(got):  # PNG -> PIL -> eval transform: float rounding away from to_input
        assert pred.classes[0] == predictor.class_names[probs[i].argmax()]
        assert pred.probs[0] == pytest.approx(probs[i].max().item(), abs=2e-3)


def test_eval_holdout_scores_the_images_training_held_out(checkpoint, capsys):  # noqa: F811
    n = 400
    cfg = preset("small").replace({"data.dataset": "fashion_mnist", "data.holdout": n, "data.image_size": 32})
    held = build_data(cfg.data, cfg.aug, 1, seed=0).val.dataset
    while not hasattr(held, "indices"):  # the held-out Subset under any view
        held = held.dataset
    indices = np.asarray(held.indices)
    assert len(indices) == n
    x, y = fashion("train")  # the raw IDX arrays
    model = load_model(checkpoint)[0].eval()
    with torch.no_grad():
        logits = model(to_input(x[indices]))
    expected = 100 * (logits.argmax(1) == torch.from_numpy(y[indices].astype(np.int64))).sum().item() / n
    assert main(["eval", str(checkpoint), "--dataset", "fashion_mnist", "--holdout", str(n), "--workers", "0",
                 "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["count"], r["split"], r["holdout"]) == (n, "train", n)
    assert math.isclose(r["top1"], expected, abs_tol=1e-9)
    assert sum(c["count"] for c in r["per_class"]) == n


@pytest.mark.parametrize("args, message", [
    (["--holdout", "10", "--split", "val"], "cuts its images from the train split; use --split train"),
    (["--holdout", "-1"], "--holdout -1 must be >= 0"),
    (["--holdout", "60000"], "data.holdout=60000 must leave training images"),
])
def test_eval_holdout_bad_input_is_a_one_line_usage_error(checkpoint, args, message, capsys):  # noqa: F811
    assert main(["eval", str(checkpoint), "--dataset", "fashion_mnist", "--workers", "0", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
