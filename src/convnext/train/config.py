"""TrainConfig: one dataclass tree for a training run, presets, file loading and dotted overrides.

Precedence: preset (``paper`` or ``small``) < config file (YAML or TOML, may name a ``preset``)
< command-line overrides (``opt.lr=1e-3``). Every value is type-checked and range-checked before
any work starts; an unknown key or a bad value raises ``UsageError`` naming the field and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import math
import sys
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import DATASETS
from ..data.progressive import SHRINK_MODES
from ..errors import UsageError, check_choice
from ..files import atomic_write_text
from ..models import get_entry
from ..preprocess import INTERPOLATIONS

AMP_MODES = ("none", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd", "muon")
GRAYSCALE_MODES = ("repeat", "in_chans")
ON_DEVICE_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # grid_sample's filters (data.device_feed)


@dataclass
class ModelConfig:
    name: str = "convnext_tiny"  # registered model (`convnext list`), roadmap steps included
    # ArchConfig fields to override (e.g. {"kernel_size": 9}); num_classes and in_chans come from the data.
    overrides: dict = field(default_factory=dict)
    # Scale every stage width (and the stem) by this factor; it must give whole widths (ArchConfig.scale_width).
    width_mult: float = 1.0
    # Start from these weights (fine-tuning); any checkpoint convnext can load. The classifier is
    # re-initialised when the class count differs.
    init: str | None = None


@dataclass
class DataConfig:
    dataset: str = "folder"  # folder | fashion_mnist | cifar10 | cifar100 | synthetic
    # folder: directory with train/ and val/ class folders; fashion_mnist: directory of the IDX files; cifar10,
    # cifar100: the extracted binary or Python version of the authors' archive.
    root: str | None = None
    # Training and eval resolution (px); unset (null): the dataset's own size where all its images have one
    # (Fashion-MNIST 28, CIFAR 32), as the `small` preset leaves it. Folders and synthetic data need a number.
    image_size: int | None = 224
    # 1-channel data: "repeat" into 3 channels (ImageNet-style stem) or "in_chans" (model gets in_chans=1).
    grayscale: str = "repeat"
    batch_size: int = 128  # per process, per micro-step
    workers: int = 4  # DataLoader worker processes
    # Use only the first N samples (after a fixed shuffle) of each split; 0 = all.
    limit_train: int = 0
    limit_val: int = 0  # use only the first N val samples (fixed shuffle); 0 = all
    # Validate on N images held out of the training split (a fixed shuffle, the same for every run) instead of
    # the val split: tune a recipe without looking at the test set. 0 = validate on the val split.
    holdout: int = 0
    synthetic_samples: int = 512  # synthetic: train samples (val: a quarter)
    synthetic_classes: int = 10  # synthetic: number of classes
    # Bad image files: skipped with a warning and counted (default), or an error with strict.
    strict: bool = False
    # Decode every image once before training so bad files are found up front.
    verify: bool = True
    # per-channel normalisation mean; None = the dataset's own statistics (ImageNet's for folders)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None  # per-channel normalisation std, given together with mean
    # Keep the whole train split (uint8) on the training device and augment each batch there (random resized crop or
    # aug.crop_padding shifts, flip, normalisation; Mixup/CutMix as usual), so Python data loading cannot starve a
    # GPU: for datasets that fit in its memory (Fashion-MNIST, folders of same-size images). No RandAugment.
    on_device: bool = False
    # Progressive resizing (data/progressive.py): the first epochs train at this smaller size, growing to
    # image_size over resize_ramp; 0 = off. Each batch is made smaller after augmentation (data.shrink);
    # validation and evaluation stay at image_size.
    min_image_size: int = 0
    # Progressive resizing: the fractions of the run where the size starts to grow and where it reaches image_size
    resize_ramp: tuple[float, float] = (0.4, 0.85)
    # How a batch is made smaller: "resize" (the whole image, shrunk) or "crop" (a random window, at full scale)
    shrink: str = "resize"
    # Loss-guided data pruning (train/pruning.py, InfoBatch's rule): from the second epoch on, each pass over the
    # data leaves out a training image whose last loss was below the mean with this probability, and weighs the
    # kept ones 1 / (1 - p); an epoch keeps its length (more passes, the hard images more often). 0 = off.
    prune_easy: float = 0.0
    # Data pruning stops at this fraction of the run: the last epochs train on plain passes (InfoBatch's annealing)
    prune_until: float = 0.875

    def size(self) -> int | None:
        """``image_size``, or where it is unset the dataset's own size; None where neither is known."""
        return self.image_size if self.image_size is not None else DATASETS[self.dataset].native_size


@dataclass
class AugmentConfig:
    random_resized_crop: bool = True  # RandomResizedCrop (else resize + center crop)
    crop_scale_min: float = 0.08  # smallest crop area for RandomResizedCrop
    # Without random_resized_crop: zero-pad every side by N px and crop image_size at a random place (the
    # usual small-image augmentation, CIFAR/MNIST style: shifts without rescaling). 0 = center crop only.
    crop_padding: int = 0
    hflip: float = 0.5  # horizontal flip probability
    randaugment: bool = True  # RandAugment on/off
    randaugment_n: int = 2  # RandAugment: ops per image
    randaugment_m: int = 9  # RandAugment: magnitude (0-30)
    randaugment_mstd: float = 0.5  # RandAugment: std of the per-image magnitude
    random_erasing: float = 0.25  # Random Erasing probability
    mixup: float = 0.8  # Beta(alpha, alpha); 0 = off
    cutmix: float = 1.0  # CutMix Beta alpha; 0 = off
    mixup_switch_prob: float = 0.5  # chance of CutMix instead of Mixup when both are on
    mixup_prob: float = 1.0  # chance a batch is mixed at all
    # Fraction of the run's epochs with Mixup/CutMix; the epochs after it train on plain (smoothed) labels, as timm's
    # --mixup-off-epoch, as a fraction so it follows a time-budgeted run's refitted length. 1 = mixed to the end.
    mixup_until: float = 1.0
    label_smoothing: float = 0.1  # label smoothing of the targets
    interpolation: str = "bicubic"  # resampling filter: nearest, bilinear, bicubic, lanczos
    crop_ratio: float = 0.875  # eval: resize to image_size / crop_ratio, center crop image_size


@dataclass
class OptimConfig:
    # adamw (the paper); sgd (with `momentum`: ResNet-50's original recipe, used by the roadmap study); muon (Muon
    # for the weight matrices inside the network, AdamW for the rest, one lr and weight decay: train/muon.py)
    optimizer: str = "adamw"
    lr: float = 4e-3  # peak learning rate (before linear scaling, see lr_base_batch)
    # Linear scaling: effective lr = lr * (batch_size * update_freq * world_size) / lr_base_batch; None = lr as is.
    lr_base_batch: int | None = 4096
    min_lr: float = 1e-6  # learning rate at the end of the cosine decay
    warmup_epochs: float = 20.0  # linear warmup length, in epochs (fractions allowed)
    epochs: int = 300  # training epochs
    # Wall-clock budget of the whole run in seconds (0: off). The first epoch's early steps are timed and the run
    # gets the most epochs that fit, in place of opt.epochs, with its schedule set for them; the count is fitted
    # again at each epoch's end until half the budget has gone by, from the pace measured so far (train/budget.py).
    time_budget: float = 0.0
    weight_decay: float = 0.05  # decoupled weight decay (not on norms, biases, layer scale)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    momentum: float = 0.9  # sgd only
    muon_momentum: float = 0.95  # muon only: Nesterov momentum of its matrices (AdamW's part keeps `betas`)
    # muon only, several processes: each orthogonalises a share of the matrices and they exchange the results (the
    # same numbers as every process doing all of them, for ~1/N of that time); false: every process does all
    muon_distributed: bool = True
    update_freq: int = 1  # gradient accumulation: optimizer step every N micro-batches
    clip_grad: float | None = None  # max global grad norm; None = no clipping (paper)
    layer_decay: float = 1.0  # layer-wise lr decay for fine-tuning (< 1); 1 = off


@dataclass
class RegularizationConfig:
    # Stochastic depth; None = the paper's rate for the model size (T 0.1, S 0.4, B/L 0.5).
    drop_path: float | None = None
    ema: bool = True  # keep an EMA of the weights (evaluated, saved as best if better)
    ema_decay: float = 0.9999  # EMA decay per step
    # decay min(ema_decay, (1 + n) / (10 + n)) at update n, for runs too short for a fixed decay
    ema_warmup: bool = False


@dataclass
class RuntimeConfig:
    out: str = "runs"  # directory the run directory goes into
    run_name: str | None = None  # default: <model>-<dataset>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # autocast: none | bf16 | fp16 (fp16: CUDA only, with GradScaler)
    compile: bool = False  # torch.compile the training model
    channels_last: bool = False  # NHWC memory format for weights and inputs
    # Keep only each residual block's input for backward and run the block again there (train/recompute.py):
    # most of a step's activation memory for about one more forward pass, the same numbers bit for bit.
    grad_checkpointing: bool = False
    seed: int = 0  # seed of the initial weights, data order and augmentation
    # CPU threads for the training process (torch.set_num_threads); 0 = PyTorch's default. On a
    # crowded machine 1 thread can be several times faster than oversubscribed spinning threads.
    threads: int = 0
    # "auto": continue from the newest valid checkpoint in the run dir if there is one; or a path.
    resume: str | None = None
    overwrite: bool = False  # allow starting fresh over an existing run dir
    save_every_steps: int = 0  # crash-safe checkpoint every N optimizer steps (0: end of epoch only)
    log_every: int = 10  # metrics.jsonl step record every N optimizer steps
    # Validate after every N-th epoch and after the last one. 0 = never: train on all the images (data.holdout 0)
    # without reading the val/test split; the result is then last.safetensors or, with EMA, last_ema.safetensors.
    val_every: int = 1
    max_bad_steps: int = 5  # stop after this many consecutive NaN/Inf steps
    max_steps: int = 0  # stop after N optimizer steps in total (0: run all epochs)
    progress: bool = True  # progress bar (only when stderr is a terminal)
    tensorboard: bool = True  # write TensorBoard event files (tb/)
    plots: bool = True  # draw loss/accuracy/lr figures at the end


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    opt: OptimConfig = field(default_factory=OptimConfig)
    reg: RegularizationConfig = field(default_factory=RegularizationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def validate(self) -> "TrainConfig":
        _validate(self)
        return self

    def resolved(self, strict: bool = True) -> "TrainConfig":
        """This config with ``data.image_size`` set: the dataset's own size where it was left unset (None). With
        ``strict``, a dataset without one is a usage error naming the flag; else the config comes back as it is."""
        if self.data.image_size is not None:
            return self
        size = self.data.size()
        if size is None:
            if not strict:
                return self
            raise UsageError(f"data.image_size is unset and data.dataset={self.data.dataset} has no single image "
                             "size; give one, e.g. --data.image_size 32")
        return self.replace({"data.image_size": size})

    def replace(self, overrides: dict[str, Any] | list[str] | None = None) -> "TrainConfig":
        """A copy with dotted overrides applied: ``{"opt.lr": 1e-3}`` or ``["opt.lr=1e-3"]``."""
        d = self.to_dict()
        for key, value in parse_overrides(overrides):
            _set_dotted(d, key, value)
        return TrainConfig.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return _build(cls, d, "").validate()

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def field_help() -> dict[str, str]:
    """Each config field's comment in this file ("key" -> text): the comment on its line, or the comment
    lines right above it. The comments are the fields' documentation; `convnext train --help` shows them."""
    try:
        source = inspect.getsource(sys.modules[__name__])
    except (OSError, TypeError):  # no source (e.g. a frozen build): the flags keep their defaults only
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, str] = {}
    for section in dataclasses.fields(TrainConfig):
        cls = typing.get_type_hints(TrainConfig)[section.name]
        first = inspect.getsourcelines(cls)[1]
        for node in ast.parse(inspect.getsource(cls)).body[0].body:
            if not isinstance(node, ast.AnnAssign):
                continue
            line = first + node.lineno - 1
            text = comments.get(line)
            if text is None:  # the comment block right above the field
                above, n = [], line - 1
                while n in comments and lines[n - 1].lstrip().startswith("#"):
                    above.insert(0, comments[n])
                    n -= 1
                text = " ".join(above) or None
            if text:
                out[f"{section.name}.{node.target.id}"] = text
    return out


# ---- resuming ------------------------------------------------------------------------------------

# What a resumed run may change: how long it runs (the schedule follows the new opt.epochs), the advice
# after a diverged run (lr, clipping, precision), and how it runs and reports (runtime.*, loader workers, where
# Muon's iterations run). Everything else decides which model is trained on which data in which order: changing
# it is a new run.
RESUMABLE_KEYS = {"opt.epochs", "opt.lr", "opt.clip_grad", "data.workers", "data.verify", "model.init",
                  "opt.muon_distributed"}
RESUMABLE_SECTIONS = ("runtime.",)
FIXED_ON_RESUME = {"runtime.seed"}  # it picks the data order and the initial weights


def resume_conflicts(saved: dict[str, Any], cfg: "TrainConfig") -> list[str]:
    """The dotted keys whose value in ``cfg`` differs from the run's ``saved`` config (``to_dict()`` form) and
    may not change on resume, as "key old -> new"."""
    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k != "overrides":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    old, new = flat(_plain(saved)), flat(cfg.to_dict())
    defaults = flat(TrainConfig().to_dict())
    conflicts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key not in old and new.get(key) == defaults.get(key):
            continue  # a field added since the run was saved, at its default: the run had that behaviour
        if (key in RESUMABLE_KEYS or key.startswith(RESUMABLE_SECTIONS)) and key not in FIXED_ON_RESUME:
            continue
        conflicts.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    return conflicts


# ---- presets -------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # Paper appendix A.1 (ImageNet-1K, 300 epochs): every default above is this recipe.
    "paper": {},
    # Small, low-resolution datasets on a CPU in minutes (Fashion-MNIST: `make demo`). The model, layer scale,
    # augmentation, lr, label smoothing and batch size were chosen by runs on Fashion-MNIST's training split with
    # 10,000 images held out (data.holdout), never the test split; docs/recipes.md has each run and what was not
    # swept. A few epochs reward images seen over model size: the smallest small-input model in its cheaper
    # batch-norm form, channels_last (~1.3x faster on CPU), no augmentation (flips: -0.3 points at 4 epochs), and
    # an EMA with warmup so even a short run has a useful average. Muon (train/muon.py) learns more per step than
    # AdamW early in a run: its 3 epochs at lr 1.6e-2 beat AdamW's 4 at 8e-3 held out (91.85 against 91.45, two
    # seeds each) at 0.90x the img/s, so in ~0.83x the time (docs/recipes.md, 4c). It trains at the dataset's own
    # size (Fashion-MNIST 28, CIFAR 32: resampling 32 px images to another size would blur them); image folders
    # and synthetic data name theirs.
    "small": {
        "model": {"name": "convnext_micro_bn_small_input"},
        "data": {"image_size": None, "batch_size": 128, "workers": 2, "grayscale": "in_chans"},
        "aug": {"random_resized_crop": False, "crop_padding": 0, "hflip": 0.0, "randaugment": False,
                "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.1,
                "interpolation": "bilinear", "crop_ratio": 1.0},
        "opt": {"optimizer": "muon", "lr": 1.6e-2, "lr_base_batch": None, "min_lr": 1e-5, "warmup_epochs": 0.3,
                "epochs": 3, "weight_decay": 0.05},
        "reg": {"drop_path": 0.0, "ema": True, "ema_decay": 0.998, "ema_warmup": True},
        "runtime": {"save_every_steps": 100, "log_every": 20, "channels_last": True},
    },
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return TrainConfig.from_dict(PRESETS[name])


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None,
                preset_name: str | None = None) -> TrainConfig:
    """Preset, then the file (YAML or TOML), then overrides; validated."""
    d: dict[str, Any] = {}
    file_d: dict[str, Any] = {}
    if path is not None:
        file_d = read_config_file(path)
        preset_name = preset_name or file_d.pop("preset", None)
        file_d.pop("preset", None)
    if preset_name is not None:
        if not isinstance(preset_name, str) or preset_name not in PRESETS:
            raise UsageError(f"unknown preset {preset_name!r}; use one of {', '.join(PRESETS)}")
        d = _deep_merge(d, PRESETS[preset_name])
    d = _deep_merge(d, file_d)
    cfg = TrainConfig.from_dict(d)
    return (cfg.replace(overrides) if overrides else cfg).resolved(strict=False)


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{p}: cannot parse config (not UTF-8 text: {e.reason} at byte {e.start}); "
                         "save it as UTF-8 YAML or TOML") from None
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            d = yaml.safe_load(text) or {}
    except Exception as e:  # noqa: BLE001 - parser errors differ by format; the message is what matters
        # YAML errors span several lines (with a source excerpt); the CLI prints one
        mark = getattr(e, "problem_mark", None)
        if isinstance(e, yaml.MarkedYAMLError) and mark is not None:
            why = f"{e.problem} at line {mark.line + 1}, column {mark.column + 1}"
        else:
            why = " ".join(str(e).split())
        raise UsageError(f"{p}: cannot parse config ({type(e).__name__}: {why}); fix the file's syntax") from None
    if not isinstance(d, dict):
        raise UsageError(f"{p}: a config file must be a mapping of sections (model:, data:, opt:, ...)")
    return d


# ---- building and checking -----------------------------------------------------------------------

def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        # model.overrides is replaced as a whole so a file can drop a preset's override
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "overrides":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(overrides: dict[str, Any] | list[str] | None) -> list[tuple[str, Any]]:
    """Dotted overrides as (key, value) pairs: a dict's items, or ``KEY=VALUE`` strings with each value read as YAML
    (what ``--set`` and ``TrainConfig.replace`` take); UsageError for a string without ``=``."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} must look like section.field=value, e.g. opt.lr=1e-3")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        pairs.append((key.strip(), value))
    return pairs


def _unknown(name: str, allowed: list[str], where: str) -> UsageError:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return UsageError(f"unknown config key '{where}{name}'; {hint}valid keys: {', '.join(allowed)}")


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise _unknown(part, list(node) if isinstance(node, dict) else [], ".".join(parts[:i]) + "." if i else "")
        if parts[i] == "overrides":  # model.overrides.<ArchConfig field>: free-form, checked by ArchConfig
            node[part] = dict(node[part]) if node[part] else {}
            node[part][".".join(parts[i + 1:])] = value
            return
        node = node[part]
    if len(parts) >= 2 and parts[-2] == "overrides" and isinstance(node, dict):
        node[parts[-1]] = value
        return
    if parts[-1] not in node:
        raise _unknown(parts[-1], list(node), ".".join(parts[:-1]) + "." if len(parts) > 1 else "")
    node[parts[-1]] = value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}={value!r} must be a list, e.g. [0.9, 0.999]")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise UsageError(f"{where}={value!r} must have {len(args)} values")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UsageError(f"{where}={value!r} must be a mapping, e.g. {{kernel_size: 9}}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where}={value!r} must be true or false")
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
            raise UsageError(f"{where}={value!r} must be an integer")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{where}={value!r} must be a string")
        return value
    raise UsageError(f"{where}: unsupported type {tp}")


def _build(cls, d: Any, prefix: str):
    if not isinstance(d, dict):
        raise UsageError(f"config section {prefix.rstrip('.') or 'top level'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            raise _unknown(key, names, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise UsageError(msg)


def _non_finite(d: Any, key: str = "") -> str | None:
    """The first dotted key holding a NaN/Inf number (alone or in a list), or None."""
    if isinstance(d, dict):
        for name, v in d.items():
            found = _non_finite(v, f"{key}.{name}" if key else name)
            if found is not None:
                return found
        return None
    if isinstance(d, (list, tuple)):
        return key if any(_non_finite(v, key) is not None for v in d) else None
    return key if isinstance(d, float) and not math.isfinite(d) else None


def _validate(c: TrainConfig) -> None:
    bad = _non_finite(c.to_dict())
    if bad is not None:  # inf/nan pass every range check below (inf > 0) and then poison the weights
        raise UsageError(f"{bad} is NaN or infinite; give it a finite value")
    try:
        entry = get_entry(c.model.name)
    except ValueError as e:
        raise UsageError(f"model.name: {e}") from None
    try:
        arch = entry.config.replace(**c.model.overrides)
    except (ValueError, TypeError) as e:
        raise UsageError(f"model.overrides: {e}") from None
    _check(c.model.width_mult > 0, f"model.width_mult={c.model.width_mult} must be > 0")
    try:
        arch.scale_width(c.model.width_mult)
    except ValueError as e:
        raise UsageError(f"model.width_mult: {e}") from None
    check_choice("data.dataset", c.data.dataset, tuple(DATASETS))
    check_choice("data.grayscale", c.data.grayscale, GRAYSCALE_MODES)
    _check(c.data.batch_size >= 1, f"data.batch_size={c.data.batch_size} must be >= 1")
    _check(c.data.workers >= 0, f"data.workers={c.data.workers} must be >= 0")
    _check(c.data.limit_train >= 0 and c.data.limit_val >= 0, "data.limit_train / data.limit_val must be >= 0")
    _check(c.data.holdout >= 0, f"data.holdout={c.data.holdout} must be >= 0 (0 = validate on the val split)")
    _check(c.data.synthetic_samples >= 1 and c.data.synthetic_classes >= 2,
           "data.synthetic_samples must be >= 1 and data.synthetic_classes >= 2")
    # an unset size is the dataset's own (checked here when the dataset has one, else when the run resolves it)
    size = c.data.size()
    if size is not None:
        problem = arch.input_size_problem(size)
        _check(problem is None, f"data.image_size={problem}")
    if c.data.min_image_size:
        problem = arch.input_size_problem(c.data.min_image_size)
        _check(problem is None, f"data.min_image_size={problem}")
        _check(size is None or c.data.min_image_size < size,
               f"data.min_image_size={c.data.min_image_size} must be below data.image_size={size} "
               "(0 = every epoch at image_size)")
    check_choice("data.shrink", c.data.shrink, SHRINK_MODES)
    ramp = c.data.resize_ramp
    _check(len(ramp) == 2 and 0 <= ramp[0] <= ramp[1] <= 1,
           f"data.resize_ramp={list(ramp)} must be [start, end] with 0 <= start <= end <= 1 (fractions of the run)")
    _check(0 <= c.data.prune_easy < 1, f"data.prune_easy={c.data.prune_easy} must be in [0, 1) (the probability "
           "of leaving a well-learned image out of a pass; 0 = off)")
    _check(0 < c.data.prune_until <= 1, f"data.prune_until={c.data.prune_until} must be in (0, 1] (the fraction of "
           "the run that prunes)")
    if (c.data.mean is None) != (c.data.std is None):
        raise UsageError("data.mean and data.std must be given together")
    if c.data.std is not None:
        _check(len(c.data.mean) == len(c.data.std) and all(s > 0 for s in c.data.std),
               "data.mean and data.std must have the same length and std values must be > 0")
    a = c.aug
    _check(0 < a.crop_scale_min <= 1, f"aug.crop_scale_min={a.crop_scale_min} must be in (0, 1]")
    _check(a.crop_padding >= 0, f"aug.crop_padding={a.crop_padding} must be >= 0 (0 = off)")
    _check(not (a.crop_padding and a.random_resized_crop),
           "aug.crop_padding applies without random_resized_crop; set aug.random_resized_crop false to use it")
    for name in ("hflip", "random_erasing", "mixup_switch_prob", "mixup_prob"):
        v = getattr(a, name)
        _check(0 <= v <= 1, f"aug.{name}={v} must be a probability in [0, 1]")
    _check(a.randaugment_n >= 1, f"aug.randaugment_n={a.randaugment_n} must be >= 1")
    _check(0 <= a.randaugment_m <= 30, f"aug.randaugment_m={a.randaugment_m} must be in [0, 30]")
    _check(a.randaugment_mstd >= 0, f"aug.randaugment_mstd={a.randaugment_mstd} must be >= 0")
    _check(a.mixup >= 0 and a.cutmix >= 0, "aug.mixup and aug.cutmix are Beta alphas and must be >= 0 (0 = off)")
    _check(0 < a.mixup_until <= 1, f"aug.mixup_until={a.mixup_until} must be in (0, 1] (the fraction of the run's "
                                   "epochs with Mixup/CutMix; 1 = to the end)")
    _check(0 <= a.label_smoothing < 1, f"aug.label_smoothing={a.label_smoothing} must be in [0, 1)")
    check_choice("aug.interpolation", a.interpolation, INTERPOLATIONS)
    if c.data.on_device:  # what the device's batch augmentation (data.device_feed) does not do
        _check(not a.randaugment, "data.on_device cannot run RandAugment on the device; set aug.randaugment false "
                                  "(or data.on_device false)")
        _check(not a.random_resized_crop or a.interpolation in ON_DEVICE_INTERPOLATIONS,
               f"data.on_device resizes random crops with grid_sample, which has no {a.interpolation!r} filter; set "
               f"aug.interpolation to one of {', '.join(ON_DEVICE_INTERPOLATIONS)} (or data.on_device false)")
    _check(0 < a.crop_ratio <= 1, f"aug.crop_ratio={a.crop_ratio} must be in (0, 1]")
    o = c.opt
    _check(o.lr > 0, f"opt.lr={o.lr} must be > 0")
    _check(o.min_lr >= 0, f"opt.min_lr={o.min_lr} must be >= 0")
    _check(o.lr_base_batch is None or o.lr_base_batch >= 1, f"opt.lr_base_batch={o.lr_base_batch} must be >= 1 or null")
    _check(o.epochs >= 1, f"opt.epochs={o.epochs} must be >= 1")
    _check(o.time_budget >= 0,
           f"opt.time_budget={o.time_budget} must be a number of seconds >= 0 (0 = off), e.g. 1800 for 30 minutes")
    _check(0 <= o.warmup_epochs <= o.epochs,
           f"opt.warmup_epochs={o.warmup_epochs} must be in [0, opt.epochs={o.epochs}]")
    _check(o.weight_decay >= 0, f"opt.weight_decay={o.weight_decay} must be >= 0")
    _check(all(0 <= b < 1 for b in o.betas), f"opt.betas={list(o.betas)} must each be in [0, 1)")
    _check(o.eps > 0, f"opt.eps={o.eps} must be > 0")
    _check(o.update_freq >= 1, f"opt.update_freq={o.update_freq} must be >= 1")
    _check(o.clip_grad is None or o.clip_grad > 0, f"opt.clip_grad={o.clip_grad} must be > 0 or null")
    _check(0 < o.layer_decay <= 1, f"opt.layer_decay={o.layer_decay} must be in (0, 1]")
    check_choice("opt.optimizer", o.optimizer, OPTIMIZERS)
    _check(0 <= o.momentum < 1, f"opt.momentum={o.momentum} must be in [0, 1)")
    _check(0 <= o.muon_momentum < 1, f"opt.muon_momentum={o.muon_momentum} must be in [0, 1)")
    r = c.reg
    _check(r.drop_path is None or 0 <= r.drop_path < 1, f"reg.drop_path={r.drop_path} must be in [0, 1) or null")
    _check(0 < r.ema_decay < 1, f"reg.ema_decay={r.ema_decay} must be in (0, 1)")
    t = c.runtime
    check_choice("runtime.amp", t.amp, AMP_MODES)
    _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
           f"runtime.device={t.device!r} is not valid; use auto, cpu, cuda or cuda:N")
    _check(0 <= t.seed < 2**63, f"runtime.seed={t.seed} must be in [0, 2**63) (torch seeds are 64-bit)")
    _check(t.threads >= 0, f"runtime.threads={t.threads} must be >= 0 (0 = PyTorch's default)")
    for name in ("save_every_steps", "max_steps", "val_every"):
        _check(getattr(t, name) >= 0, f"runtime.{name}={getattr(t, name)} must be >= 0")
    _check(t.log_every >= 1, f"runtime.log_every={t.log_every} must be >= 1")
    _check(t.max_bad_steps >= 1, f"runtime.max_bad_steps={t.max_bad_steps} must be >= 1")
    _check(t.run_name is None or (t.run_name and "/" not in t.run_name and t.run_name not in (".", "..")),
           f"runtime.run_name={t.run_name!r} must be a plain directory name")
    _check(t.run_name is None or len(t.run_name.encode()) <= 200,
           f"runtime.run_name is {len(t.run_name.encode()) if t.run_name else 0} bytes long; file systems allow "
           "255 and checkpoints add suffixes: use a name of at most 200 bytes")
