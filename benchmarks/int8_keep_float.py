"""INT8 accuracy of each choice of float layers (README, "Reduced precision and INT8").

    PYTHONPATH=src .venv/bin/python benchmarks/int8_keep_float.py runs/fmnist-cpu30-micro \
        benchmarks/results/precision/fmnist_cpu30_micro_int8_keep_float.json

Fashion-MNIST test split (10,000 images), calibration on 512 training images (fixed shuffle, seed 0).
"""

import json, sys, torch, warnings
warnings.filterwarnings("ignore")
torch.set_num_threads(2)
import convnext
from convnext.checkpoint import load_model
from convnext.infer.quantize import calibration_images
from convnext.data.assembly import load_eval_split, eval_dataset
model, info = load_model(sys.argv[1]); pre = info.preprocess
calib = calibration_images("fashion_mnist", pre, 512)
ds = eval_dataset(load_eval_split("fashion_mnist", "val", None, pre.channels), pre)
X = torch.stack([ds[i][0] for i in range(len(ds))]); Y = torch.tensor([ds[i][1] for i in range(len(ds))])
with torch.no_grad(): ref = torch.cat([model(x) for x in X.split(500)]).argmax(1)
out = {"checkpoint": sys.argv[1], "split": "fashion_mnist test (10,000)", "calibration": "512 training images, fixed shuffle seed 0",
       "fp32_top1": (ref == Y).float().mean().item() * 100, "variants": []}
for keep in [(), ("stem", "head"), ("stem",), ("head",)]:
    q = convnext.quantize(model, calib, keep_float=keep)
    p = torch.cat([q(x) for x in X.split(500)]).argmax(1)
    out["variants"].append({"keep_float": list(keep), "top1": (p == Y).float().mean().item() * 100,
                            "agreement": (p == ref).float().mean().item() * 100})
    print(out["variants"][-1], flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=2)
