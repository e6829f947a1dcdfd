import json

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.checkpoint import load_model
from convnext.cli import main
from convnext.errors import UsageError
from convnext.data.images import ImageError, collect_images, load_image
from convnext.data.transforms import eval_transform
from convnext.infer.predict import Predictor, predict
from convnext.checkpoint import Preprocess

from infer_fixtures import CLASSES, checkpoint, fashion, to_input, write_awkward_images  # noqa: F401

OK_FILES = ["astronaut.bmp", "astronaut.jpg", "astronaut.png", "astronaut.webp", "astronaut_rgba.png",
            "camera_16bit.png", "camera_gray.png", "coffee.jpg", "coffee.png", "coffee_exif_rotated.jpg",
            "coffee_exif_rotated.png"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_awkward_images(root)
    return root


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    x, y = fashion("t10k", 64)
    root = tmp_path_factory.mktemp("fashion")
    for i, img in enumerate(x):
        Image.fromarray(img).save(root / f"{i:03d}_{y[i]}.png")
    return root, x, y


def test_eval_transform_matches_timm_eval_pipeline(photos):
    timm_data = pytest.importorskip("timm.data")
    pre = Preprocess()  # 224, crop 0.875 (resize 256), bicubic, ImageNet mean/std
    ref = timm_data.create_transform(input_size=224, is_training=False, crop_pct=0.875, interpolation="bicubic",
                                     mean=pre.mean, std=pre.std)
    for name in ("coffee.png", "astronaut.png"):
        image = load_image(photos / name)
        ours, theirs = eval_transform(pre)(image), ref(image)
        assert ours.shape == theirs.shape == (3, 224, 224)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_loader_modes_and_exif(photos):
    from skimage import data

    camera, coffee = data.camera(), data.coffee()
    # 16-bit PNG (I;16) maps 0..65535 onto 0..255 exactly, no clipping
    assert Image.open(photos / "camera_16bit.png").mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(load_image(photos / "camera_16bit.png", channels=1)), camera)
    # grayscale loads as RGB for a 3-channel model, RGBA (opaque) equals its RGB
    assert load_image(photos / "camera_gray.png").mode == "RGB"
    np.testing.assert_array_equal(np.asarray(load_image(photos / "astronaut_rgba.png")), data.astronaut())
    # EXIF orientation 6: stored 400 wide x 600 tall, comes back upright 600 x 400 and pixel-equal
    assert Image.open(photos / "coffee_exif_rotated.png").size == (400, 600)
    upright = load_image(photos / "coffee_exif_rotated.png")
    assert upright.size == (600, 400)
    np.testing.assert_array_equal(np.asarray(upright), coffee)
    assert load_image(photos / "coffee_exif_rotated.jpg").size == (600, 400)
    # transparent pixels are composited on white
    rgba = np.zeros((40, 40, 4), np.uint8)
    Image.fromarray(rgba).save(photos / "clear.png")
    assert np.asarray(load_image(photos / "clear.png")).min() == 255
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(photos / "corrupt.jpg")
    with pytest.raises(ImageError, match="not an image"):
        load_image(photos / "notes.txt")
    (photos / "clear.png").unlink()


def test_collect_images_files_dirs_globs(photos, tmp_path):
    paths, problems = collect_images([photos / "notes.txt", str(photos / "astronaut.*"), photos, "missing.png",
                                      str(tmp_path / "*.jpg")])
    names = [p.name for p in paths]
    assert names[0] == "notes.txt"  # named explicitly: kept, so it gets its own error later
    assert names[1:5] == ["astronaut.bmp", "astronaut.jpg", "astronaut.png", "astronaut.webp"]
    assert len(names) == len(set(names)) == 13  # directory adds the rest, no duplicates, .txt not picked up twice
    assert problems == [("missing.png", "no such file or directory"),
                        (str(tmp_path / "*.jpg"), "pattern matches no image files")]


def test_predict_fashion_mnist_images_is_accurate_and_matches_model(checkpoint, fashion_dir):
    root, x, y = fashion_dir
    results = predict(checkpoint, [root], topk=3, batch_size=16, device="cpu")
    assert len(results) == 64 and all(r.ok for r in results)
    assert [r.file for r in results] == sorted(str(p) for p in root.glob("*.png"))
    labels = [int(r.file.rsplit("_", 1)[1].split(".")[0]) for r in results]
    top1 = [r.indices[0] for r in results]
    accuracy = np.mean(np.array(top1) == np.array(labels))
    assert accuracy >= 0.6, accuracy  # trained 40 steps: ~75% on the test split; chance is 10%
    for r in results:
        assert r.classes == [CLASSES[i] for i in r.indices]
        assert r.probs == sorted(r.probs, reverse=True) and 0 < sum(r.probs) <= 1 + 1e-6
    # same answers as the model on the training-time tensor pipeline (torch resize instead of PIL)
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        direct = model(to_input(x)).softmax(-1)
    order = [int(r.file.rsplit("/", 1)[1][:3]) for r in results]
    agree = np.mean([direct[i].argmax().item() == r.indices[0] for i, r in zip(order, results)])
    assert agree >= 0.95
    probs = torch.tensor([r.probs[0] for r in results])
    torch.testing.assert_close(probs, direct[order].max(-1).values, atol=0.03, rtol=0)


def test_degenerate_shapes_get_their_own_error(checkpoint, tmp_path):
    Image.fromarray(np.full((2, 400), 128, np.uint8)).save(tmp_path / "strip.png")  # 200:1
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(tmp_path / "dot.png")  # upscaled, still fine
    results = predict(checkpoint, [tmp_path], device="cpu")
    by_name = {r.file.rsplit("/", 1)[1]: r for r in results}
    assert "too elongated" in by_name["strip.png"].error and by_name["dot.png"].ok


def test_batching_and_threads_do_not_change_answers(checkpoint, photos):
    files = [photos / n for n in OK_FILES] + [photos / "corrupt.jpg"]
    a = list(Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=1, workers=0).predict_files(files, 10))
    b = list(Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=4, workers=3).predict_files(files, 10))
    assert [r.file for r in a] == [r.file for r in b] == [str(f) for f in files]
    for ra, rb in zip(a, b):
        assert ra.ok == rb.ok and ra.indices == rb.indices
        np.testing.assert_allclose(ra.probs, rb.probs, atol=1e-5)


def test_cli_json_on_real_photos_with_broken_files(checkpoint, photos, capsys):
    # a directory (non-images in it are skipped) plus a text file named explicitly (it gets an error)
    code = main(["predict", str(checkpoint), str(photos), str(photos / "notes.txt"), "--json", "-k", "3",
                 "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2  # some inputs unreadable; the rest answered
    doc = json.loads(out)
    assert set(doc) == {"checkpoint", "model", "topk", "num_ok", "num_errors", "results"}
    assert doc["model"] == "convnext_atto" and doc["topk"] == 3
    assert doc["num_ok"] == len(OK_FILES) and doc["num_errors"] == 2
    by_name = {r["file"].rsplit("/", 1)[1]: r for r in doc["results"]}
    assert sorted(by_name) == sorted(OK_FILES + ["corrupt.jpg", "notes.txt"])
    for name in OK_FILES:
        r = by_name[name]
        assert r["error"] is None and [p["rank"] for p in r["predictions"]] == [1, 2, 3]
        assert all(set(p) == {"rank", "class", "index", "prob"} and p["class"] == CLASSES[p["index"]]
                   for p in r["predictions"])
    assert "corrupt or truncated" in by_name["corrupt.jpg"]["error"] and by_name["corrupt.jpg"]["predictions"] == []
    assert "not an image" in by_name["notes.txt"]["error"]
    # lossless copies of one picture give the same probabilities, whatever the format or mode
    probs = lambda n: [p["prob"] for p in by_name[n]["predictions"]]  # noqa: E731
    for twin in ("astronaut.bmp", "astronaut.webp", "astronaut_rgba.png"):
        np.testing.assert_allclose(probs(twin), probs("astronaut.png"), atol=1e-6)
    np.testing.assert_allclose(probs("camera_16bit.png"), probs("camera_gray.png"), atol=1e-6)
    np.testing.assert_allclose(probs("coffee_exif_rotated.png"), probs("coffee.png"), atol=1e-6)
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 3 and "corrupt.jpg" in err and "notes.txt" in err
    assert err_lines[-1] == "convnext predict: 2 of 13 input(s) could not be classified"


def test_cli_table_and_topk_capped(checkpoint, photos, capsys):
    code = main(["predict", str(checkpoint), str(photos / "astronaut.png"), str(photos / "coffee.jpg"),
                 "--topk", "50", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split() == ["file"] + [f"top-{i}" for i in range(1, 11)]  # 10 classes, not 50
    assert lines[2].startswith(str(photos / "astronaut.png")) and len(lines) == 4
    assert lines[2].count("%") == 10


def test_cli_usage_errors_exit_2(checkpoint, photos, tmp_path, capsys):
    assert main(["predict", str(checkpoint), str(tmp_path / "nothing*.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no images to classify" in err
    assert main(["predict", str(tmp_path / "missing.safetensors"), str(photos / "coffee.jpg")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(photos / "coffee.jpg"), "--topk", "0"]) == 2
    assert "--topk 0 must be >= 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            Predictor.from_checkpoint(checkpoint, device="cuda")


def test_fast_path_gives_the_same_answers(checkpoint, photos):
    pytest.importorskip("convnext.infer.fuse")
    files = [photos / n for n in OK_FILES]
    plain = list(Predictor.from_checkpoint(checkpoint, device="cpu").predict_files(files, 10))
    fast = list(Predictor.from_checkpoint(checkpoint, device="cpu", fast=True).predict_files(files, 10))
    for a, b in zip(plain, fast):
        assert a.indices[:3] == b.indices[:3]
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
