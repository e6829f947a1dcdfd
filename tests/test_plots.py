import json

import numpy as np
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from convnext.errors import UsageError
from convnext.models.summary import roadmap_rows
from convnext.plots import (
    confusion_matrix_figure,
    plot_confusion_matrix,
    plot_roadmap,
    plot_run,
    read_metrics,
    roadmap_figure,
    run_figures,
    study_top1,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, epochs=3, steps_per_epoch=5, ema=True, torn_tail=False):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines, step = [], 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            step += 1
            lines.append({"type": "step", "epoch": epoch, "step": step, "loss": 2.3 / step, "lr": 1e-3 * step,
                          "img_per_s": 100.0, "time": float(step)})
        lines.append({"type": "epoch", "epoch": epoch, "step": step, "train_loss": 2.0 - epoch * 0.5,
                      "val_loss": 2.1 - epoch * 0.5, "val_top1": 50.0 + 10 * epoch, "val_top5": 90.0 + epoch,
                      "ema_top1": (49.0 + 10 * epoch) if ema else None, "lr": 1e-3 * step, "time": float(step)})
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    if torn_tail:
        text += '{"type": "step", "ep'
    (run_dir / "metrics.jsonl").write_text(text)
    return lines


def _is_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_plot_run_writes_three_valid_pngs(tmp_path):
    _write_run(tmp_path / "run")
    paths = plot_run(tmp_path / "run")
    assert sorted(p.name for p in paths) == ["accuracy.png", "loss.png", "lr.png"]
    for p in paths:
        w, h = _is_png(p)
        assert w >= 500 and h >= 250


def test_run_figures_have_expected_series(tmp_path):
    lines = _write_run(tmp_path / "run")
    figs = run_figures(read_metrics(tmp_path / "run"))
    loss_ax = figs["loss"].axes[0]
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels == ["train loss (step)", "train loss (epoch)", "val loss"]
    step_line = loss_ax.get_lines()[0]
    steps = [x for x in lines if x["type"] == "step"]
    np.testing.assert_allclose(step_line.get_ydata(), [x["loss"] for x in steps])
    # epoch losses sit at the step where each epoch ended
    np.testing.assert_array_equal(loss_ax.get_lines()[1].get_xdata(), [5, 10, 15])

    acc_ax = figs["accuracy"].axes[0]
    assert [line.get_label() for line in acc_ax.get_lines()] == ["val top-1", "val top-5", "EMA top-1"]
    np.testing.assert_allclose(acc_ax.get_lines()[0].get_ydata(), [50, 60, 70])
    assert acc_ax.get_xlabel() == "epoch" and "%" in acc_ax.get_ylabel()

    lr_ax = figs["lr"].axes[0]
    assert len(lr_ax.get_lines()) == 1
    np.testing.assert_allclose(lr_ax.get_lines()[0].get_ydata(), [1e-3 * s["step"] for s in steps])


def test_null_ema_is_not_plotted_and_torn_last_line_is_skipped(tmp_path):
    _write_run(tmp_path / "run", ema=False, torn_tail=True)
    records = read_metrics(tmp_path / "run")
    assert len(records) == 18
    acc_ax = run_figures(records)["accuracy"].axes[0]
    assert [line.get_label() for line in acc_ax.get_lines()] == ["val top-1", "val top-5"]


def test_only_step_records_gives_no_accuracy_chart(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"type": "step", "epoch": 0, "step": 1, "loss": 1.0, "lr": 0.1}) + "\n")
    paths = plot_run(run, out_dir=tmp_path / "out")
    assert sorted(p.name for p in paths) == ["loss.png", "lr.png"]
    assert all(p.parent == tmp_path / "out" for p in paths)


def test_bad_metrics_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such metrics file"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("garbage\n" + json.dumps({"type": "step", "step": 1, "loss": 1}) + "\n")
    with pytest.raises(UsageError, match=r"metrics.jsonl:1: not a JSON line"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(UsageError, match="no step or epoch records"):
        plot_run(tmp_path)


def test_confusion_matrix(tmp_path):
    m = np.array([[8, 2, 0], [1, 9, 0], [0, 3, 7]])
    fig = confusion_matrix_figure(m, ["cat", "dog", "bird"])
    ax = fig.axes[0]
    image = ax.get_images()[0]
    # colours are row-normalised rates
    np.testing.assert_allclose(image.get_array(), m / m.sum(1, keepdims=True))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert "accuracy 80.00%" in ax.get_title()
    # one count label per non-zero cell
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in m.ravel() if v)
    path = plot_confusion_matrix(m, ["cat", "dog", "bird"], tmp_path / "cm.png")
    _is_png(path)
    with pytest.raises(UsageError, match="square"):
        confusion_matrix_figure(np.zeros((2, 3)), None)
    with pytest.raises(UsageError, match="one name per class"):
        confusion_matrix_figure(m, ["a", "b"])


@pytest.fixture(scope="module")
def rows():
    return roadmap_rows()


def test_roadmap_figure_paper_and_measured_bars(rows, tmp_path):
    fig = roadmap_figure(rows)
    assert len(fig.axes) == 2
    top1_ax, flops_ax = fig.axes
    assert len(top1_ax.containers) == 1 and len(top1_ax.containers[0]) == 17
    assert [p.get_width() for p in top1_ax.containers[0]] == [r["paper_top1"] for r in rows]
    # compute panel: paper GFLOPs next to our GMACs
    assert len(flops_ax.containers) == 2
    np.testing.assert_allclose([p.get_width() for p in flops_ax.containers[1]], [r["gmacs"] for r in rows])
    assert [t.get_text() for t in top1_ax.get_yticklabels()][0] == "resnet50"

    study = [{"name": r["name"], "seed": s, "top1": 80.0 + i * 0.5 + s} for i, r in enumerate(rows[:5]) for s in (0, 1)]
    fig = roadmap_figure(rows, study)
    assert len(fig.axes) == 3
    ours = [c for c in fig.axes[1].containers if isinstance(c, BarContainer)]
    assert len(ours) == 1
    ours = ours[0]
    widths = [p.get_width() for p in ours]
    assert widths[:5] == pytest.approx([80.5 + i * 0.5 for i in range(5)])  # mean over the two seeds
    assert widths[5:] == [0.0] * 12  # steps without results draw no bar
    path = plot_roadmap(rows, study, path=tmp_path / "roadmap.png")
    _is_png(path)


def test_study_formats():
    assert study_top1({"a": 1.0, "b": [2.0, 4.0]}) == {"a": [1.0], "b": [2.0, 4.0]}
    assert study_top1({"results": [{"step": "a", "val_top1": 3}, {"step": "a", "val_top1": 5}]}) == {"a": [3.0, 5.0]}
    # the study runner's results.json: {"steps": [{"name", "top1": [per seed], "top1_mean", ...}]}
    assert study_top1({"study": "roadmap", "steps": [{"name": "a", "top1": [1.0, 2.0], "top1_mean": 1.5},
                                                      {"name": "b", "top1": [], "top1_mean": None}]}) == {"a": [1.0, 2.0]}
    with pytest.raises(UsageError, match="not a mapping"):
        study_top1([1, 2])


def test_cli_plot_run_and_roadmap(tmp_path, capsys):
    from convnext.cli import main

    _write_run(tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.rsplit("/", 1)[1] for line in out) == ["accuracy.png", "loss.png", "lr.png"]
    study = tmp_path / "study"
    study.mkdir()
    (study / "results.json").write_text(json.dumps({"resnet50": [90.1, 90.3], "roadmap_modern_recipe": 91.0}))
    assert main(["plot", "--roadmap", str(study)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {study / 'roadmap.png'}"
    _is_png(study / "roadmap.png")
    (study / "bad.json").write_text("{oops")
    assert main(["plot", "--roadmap", str(study / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert main(["plot"]) == 2


def test_roadmap_legend_names_paper_and_ours_once(rows):
    fig = roadmap_figure(rows, {"resnet50": 90.0})
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["paper", "ours"]
