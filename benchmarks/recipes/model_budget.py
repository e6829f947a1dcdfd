"""Which small-input ConvNeXt learns Fashion-MNIST best in a fixed time? A plain training loop per candidate.

Each candidate trains for BUDGET seconds of one CPU thread (the step count is set from the speed of its first
5 steps, so the one-cycle schedule ends with the budget), batch 128, AdamW lr 4e-3, no augmentation, layer
scale initialised at 1, and is scored on the 10,000 training images that ``data.holdout`` holds out (never the
test split). Prints one JSON line per candidate: held-out top-1, images seen, seconds, last loss.

    python benchmarks/recipes/model_budget.py 110 micro,narrow
"""

from __future__ import annotations

import json
import sys
import time

import torch

from convnext.data.datasets import split_holdout
from convnext.data.fashion_mnist import FashionMNIST
from convnext.models import create_model
from convnext.train.accelerate import accelerate_for_training

CANDIDATES = {  # ArchConfig overrides of convnext_micro_small_input (stride-2 stem; layer scale init 1)
    "micro": dict(depths=(1, 1, 1), dims=(32, 64, 128)),
    "micro_121": dict(depths=(1, 2, 1), dims=(32, 64, 128)),
    "micro_222": dict(depths=(2, 2, 2), dims=(32, 64, 128)),
    "narrow_222": dict(depths=(2, 2, 2), dims=(24, 48, 96)),
    "four_stages": dict(depths=(1, 1, 3, 1), dims=(32, 64, 128, 256)),
    "stride4_stem": dict(depths=(2, 2, 2), dims=(48, 96, 192), stem_patch_size=4),
}


def main() -> None:
    budget, names = float(sys.argv[1]), sys.argv[2].split(",")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = FashionMNIST(split="train")
    rest, held = split_holdout(ds, 10_000)
    def tensors(sub):
        idx = torch.tensor(sub.indices)
        return (ds.images[idx].float() / 255 - 0.2860) / 0.3530, ds.targets[idx]
    (x, y), (xv, yv) = tensors(rest), tensors(held)
    for name in names:
        model = create_model("convnext_micro_small_input", in_chans=1, num_classes=10, **CANDIDATES[name])
        accelerate_for_training(model, "cpu")
        opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.05)
        g = torch.Generator().manual_seed(0)

        def step():
            i = torch.randint(0, len(x), (128,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        start = time.time()
        for _ in range(5):
            step()
        steps = int((budget - (time.time() - start)) / ((time.time() - start) / 5))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=steps, pct_start=0.1)
        for _ in range(steps):
            loss = step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(xv[i:i + 1000]).argmax(1) == yv[i:i + 1000]).sum().item() for i in range(0, 10_000, 1000))
        print(json.dumps(dict(name=name, heldout_top1=correct / 100, images=(steps + 5) * 128,
                              seconds=round(time.time() - start), loss=round(loss.item(), 3))), flush=True)


if __name__ == "__main__":
    main()
