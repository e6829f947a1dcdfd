"""Tools for tests/test_reliability.py: a `convnext` process that SIGKILLs itself at a chosen moment,
directory snapshots for "nothing was written" checks, and hostile / damaged checkpoint files.

Run as a script, this file is `convnext` with one fault injected, chosen by the environment:

  CONVNEXT_KILL_AT=step:N    SIGKILL right after optimizer step N (mid-epoch, between checkpoints)
  CONVNEXT_KILL_AT=state:N   SIGKILL halfway through writing the N-th train_state.pt (torn temp file)
  CONVNEXT_KILL_AT=model:N   SIGKILL halfway through writing the N-th last.safetensors (torn temp file)
  CONVNEXT_KILL_AT=ema:N     SIGKILL halfway through writing the N-th last_ema.safetensors (torn temp file)
  CONVNEXT_KILL_AT=link:N    SIGKILL after the N-th backup hard link, before the new state is written
  CONVNEXT_MARK_AT=step:N    write the file $CONVNEXT_MARK_FILE after step N and go on (the parent
                             kills from outside at whatever moment its SIGKILL lands)

The kill happens inside the real engine and the real writers (only the moment is chosen), so what
survives on disk is exactly what a crash at that moment leaves.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
PYTHON = sys.executable

# A tiny CPU run: 64 synthetic 32x32 images, 4 classes, batch 8 -> 8 optimizer steps per epoch.
STEPS_PER_EPOCH = 8


def train_argv(out: str | os.PathLike, *extra: str, epochs: int = 2, save_every: int = 2) -> list[str]:
    return [
        "train", "--preset", "small", "--model.name", "convnext_atto",
        "--set", "model.overrides.depths=[1,1,1,1]", "--set", "model.overrides.dims=[8,16,32,64]",
        "--data.dataset", "synthetic", "--data.synthetic_samples", "64", "--data.synthetic_classes", "4",
        "--data.image_size", "32", "--data.batch_size", "8", "--data.workers", "0",
        "--opt.epochs", str(epochs), "--opt.warmup_epochs", "0.5", "--opt.lr", "3e-3",
        "--reg.ema", "true", "--reg.ema_decay", "0.9",
        "--runtime.device", "cpu",  # CPU semantics (bitwise resume) asserted; auto would pick a GPU where one exists
        "--runtime.out", str(out), "--runtime.run_name", "run", "--runtime.progress", "false",
        "--runtime.tensorboard", "false", "--runtime.plots", "false", "--runtime.log_every", "1",
        "--runtime.save_every_steps", str(save_every), *extra,
    ]


def run_convnext(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """This file as `convnext` in a fresh interpreter (faults from ``env``)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([PYTHON, str(HERE), *argv], env=full_env, capture_output=True, text=True, timeout=timeout)


def popen_convnext(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([PYTHON, str(HERE), *argv], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def snapshot(root: str | os.PathLike) -> dict[str, tuple[int, int, str]]:
    """Every file and directory under ``root`` with size, mtime and content hash."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel + "/"] = (0, p.stat().st_mtime_ns, "")
        else:
            out[rel] = (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# ---- hostile and damaged files -----------------------------------------------------------------

class Payload:
    """Unpickling this object runs ``exec(code)``: what a malicious checkpoint does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        import builtins

        return builtins.exec, (self.code,)


def touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


def write_hostile_zip(path: Path, marker: Path, wrap_state: dict | None = None) -> Path:
    """A torch.save (zip) checkpoint whose state dict hides a code-running object next to real tensors."""
    import torch

    state = dict(wrap_state or {"stem.conv.weight": torch.zeros(8, 3, 4, 4)})
    state["exploit"] = Payload(touch_code(marker))
    torch.save({"model": state}, path)
    return path


def write_hostile_legacy(path: Path, marker: Path) -> Path:
    """A plain (pre-zip) pickle stream that calls exec when loaded."""
    path.write_bytes(pickle.dumps({"model": Payload(touch_code(marker))}, protocol=2))
    return path


# ---- fault injection inside a real `convnext` process --------------------------------------------

def _kill_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _torn_writer(write, tmp: str) -> None:
    """Run the real write into ``tmp``, cut the file to half its size, die."""
    write(tmp)
    size = os.path.getsize(tmp)
    with open(tmp, "r+b") as f:
        f.truncate(size // 2)
    _kill_now()


def _install_faults() -> None:
    from convnext import checkpoint
    from convnext.train import loop, state

    kill = os.environ.get("CONVNEXT_KILL_AT")
    mark = os.environ.get("CONVNEXT_MARK_AT")
    if kill:
        what, n = kill.split(":")
        n = int(n)
        counts = {"n": 0}
        if what == "step":
            original_step = loop.Trainer._train_step

            def step_then_die(self, batches):
                out = original_step(self, batches)
                counts["n"] += 1
                if counts["n"] == n:
                    _kill_now()
                return out

            loop.Trainer._train_step = step_then_die
        elif what in ("state", "model", "ema"):
            target = {"state": state.STATE_NAME, "model": "last.safetensors", "ema": "last_ema.safetensors"}[what]
            real_atomic_write = checkpoint.atomic_write

            def atomic_write_then_die(path, write):
                if Path(path).name == target:
                    counts["n"] += 1
                    if counts["n"] == n:
                        return real_atomic_write(path, lambda tmp: _torn_writer(write, tmp))
                return real_atomic_write(path, write)

            # the state writer and save_model each look the writer up in their own module
            state.atomic_write = atomic_write_then_die
            checkpoint.atomic_write = atomic_write_then_die
        elif what == "link":
            real_link = os.link

            def link_then_die(src, dst, *a, **kw):
                real_link(src, dst, *a, **kw)
                counts["n"] += 1
                if counts["n"] == n:
                    _kill_now()

            os.link = link_then_die
        else:
            raise SystemExit(f"bad CONVNEXT_KILL_AT {kill!r}")
    if mark:
        _, n = mark.split(":")
        marker, seen = Path(os.environ["CONVNEXT_MARK_FILE"]), {"n": 0}
        original_mark_step = loop.Trainer._train_step

        def step_then_mark(self, batches):
            out = original_mark_step(self, batches)
            seen["n"] += 1
            if seen["n"] == int(n):
                marker.write_text("reached")
            return out

        loop.Trainer._train_step = step_then_mark


if __name__ == "__main__":
    _install_faults()
    from convnext.cli import main

    raise SystemExit(main(sys.argv[1:]))
