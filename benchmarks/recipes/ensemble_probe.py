"""Would two 30-minute networks beat one? Scores finished recipe-sweep runs, alone and averaged in pairs and all
together (the mean of their softmax outputs), on the training images they held out (data.holdout), never the
test split.

    python benchmarks/recipes/ensemble_probe.py RUN_DIR [RUN_DIR ...] --out OUT.json [--data-root DIR]

Each run contributes the weights fixed before it trained: its last epoch's EMA (last_ema.safetensors), or, for runs
older than that file, its last epoch's model weights (last.safetensors). Every run must have held out the same
images (the same data.holdout, which cuts a fixed set).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import torch
import yaml

from convnext.checkpoint import load_model
from convnext.data.assembly import eval_dataset, load_eval_split
from convnext.data.datasets import split_holdout
from convnext.files import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared usage module
from usage import UsageExit, run_main  # noqa: E402


@functools.lru_cache(maxsize=None)
def heldout_split(dataset: str, root: str | None, channels: int, holdout: int):
    """The ``holdout`` training images data.holdout cuts, read once for every run that shares them."""
    return split_holdout(load_eval_split(dataset, "train", root, channels), holdout)[1]


def weights_of(run_dir: Path) -> Path:
    ema = run_dir / "last_ema.safetensors"
    return ema if ema.is_file() else run_dir / "last.safetensors"


@torch.no_grad()
def heldout_probs(checkpoint: Path, holdout: int, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities of ``checkpoint`` on the ``holdout`` training images its run validated on, and labels."""
    model, info = load_model(checkpoint, map_location="cpu")
    model.eval()
    split = heldout_split(info.train.get("dataset", "fashion_mnist"), root, info.preprocess.channels, holdout)
    loader = torch.utils.data.DataLoader(eval_dataset(split, info.preprocess), batch_size=1000)
    probs, labels = zip(*[(model(x).float().softmax(1), y) for x, y in loader])
    return torch.cat(probs), torch.cat(labels)


def top1(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100.0 * (probs.argmax(1) == labels).float().mean().item(), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-root", default=None, help="the dataset's folder, where it is not in its default place")
    args = p.parse_args()
    if len(set(args.runs)) != len(args.runs):
        raise UsageExit("a run is named twice: name each run once")
    missing = [str(r) for r in args.runs if not (r / "config.yaml").is_file() or not weights_of(r).is_file()]
    if missing:
        raise UsageExit(f"not a finished training run (config.yaml and last weights): {', '.join(missing)}")
    holdouts = {int(yaml.safe_load((r / "config.yaml").read_text())["data"]["holdout"]) for r in args.runs}
    if len(holdouts) != 1 or 0 in holdouts:
        raise UsageExit(f"the runs held out {sorted(holdouts)} images: they must all hold out the same nonzero count")
    holdout = holdouts.pop()
    probs, labels = {}, None
    for run in args.runs:
        probs[str(run)], labels_run = heldout_probs(weights_of(run), holdout, args.data_root)
        if labels is not None and not torch.equal(labels, labels_run):
            raise UsageExit(f"{run} held out other images than {args.runs[0]}")
        labels = labels_run
        print(f"{run}: {top1(probs[str(run)], labels):.2f}", flush=True)
    single = {name: top1(pr, labels) for name, pr in probs.items()}
    pairs = [{"runs": [a, b], "top1": top1(probs[a] + probs[b], labels),
              "gain_over_better": round(top1(probs[a] + probs[b], labels) - max(single[a], single[b]), 2)}
             for a, b in itertools.combinations(probs, 2)]
    for pair in pairs:
        print(f"{' + '.join(pair['runs'])}: {pair['top1']:.2f} ({pair['gain_over_better']:+.2f})")
    every = top1(sum(probs.values()), labels)
    print(f"all {len(probs)}: {every:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({
        "split": f"{holdout} training images held out (data.holdout), never the test split",
        "weights": {name: weights_of(Path(name)).name for name in probs},
        "single_top1": single, "pairs": pairs, "all_top1": every,
        "command": "python benchmarks/recipes/ensemble_probe.py " + " ".join(sys.argv[1:]),
    }, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_main(main))
