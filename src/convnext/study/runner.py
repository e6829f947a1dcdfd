"""The roadmap study: every roadmap step x every seed, trained under one budget, resumable.

Layout of a study:
    <out>/study.json              the settings (budget, data, recipes); a rerun must match them
    <out>/records/<step>-seed<k>.json   one per finished (step, seed) run: its measured top-1; never redone
    <out>/log.jsonl               one line per event (study start/end, run start/finish, with times)
    <out>/results.json, results.md, roadmap.png   rewritten after every finished run
    <work_dir>/<step>-seed<k>/    the engine's run directory (checkpoints, metrics.jsonl), not committed

A finished (step, seed) has a record and is skipped; an unfinished one resumes from its newest
checkpoint through the engine's ``resume auto``. Runs go seed-major (every step with seed 0, then
every step with seed 1, ...), so a study stopped early still covers every step.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write, check_output_path
from ..errors import UsageError
from ..runtime import resolve_device
from ..models.roadmap import RoadmapStep
from ..train import TrainConfig, train
from ..data import load_dataset
from .plan import StudyPlan, study_settings, upgrade_settings
from .recipe import run_name, train_config
from .report import write_outputs

SETTINGS_NAME = "study.json"
LOG_NAME = "log.jsonl"
RECORDS_DIR = "records"


def _log(out: Path, event: dict[str, Any]) -> None:
    with open(out / LOG_NAME, "a") as f:
        f.write(json.dumps({"time": time.time(), **event}) + "\n")


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / SETTINGS_NAME
    if path.exists():
        # read in today's form: a study recorded by an earlier version (the committed one in
        # results/roadmap spells its data fashion-mnist) is still the same study
        old = upgrade_settings(json.loads(path.read_text()))
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise UsageError(f"{out} holds a study with different settings ({', '.join(changed)} differ); "
                             "rerun with the same --budget/--data, or use a new --out")
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=2) + "\n"))


def record_path(out: Path, step: str, seed: int) -> Path:
    return out / RECORDS_DIR / f"{run_name(step, seed)}.json"


def read_records(out: Path) -> list[dict[str, Any]]:
    folder = out / RECORDS_DIR
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _train_run(cfg: TrainConfig, step: RoadmapStep, seed: int, out: Path, threads: int) -> dict[str, Any]:
    """Train one (step, seed) to the end (resuming if it has a checkpoint) and write its record.
    Runs in the study's process or in a worker process (``jobs`` > 1)."""
    _log(out, {"event": "run_start", "step": step.name, "seed": seed})
    print(f"study: {step.name} seed {seed} ({step.recipe} recipe)", file=sys.stderr)
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        summary = train(cfg)
    finally:  # in the caller's process the thread count must not leak into what runs next
        torch.set_num_threads(before)
    if summary["stopped_early"] or summary["final_val_top1"] is None:
        raise RuntimeError(f"{step.name} seed {seed}: the run stopped before its final evaluation")
    record = {
        "step": step.name, "seed": seed, "recipe": step.recipe,
        "top1": summary["final_val_top1"], "top5": summary["history"][-1]["val_top5"],
        "val_loss": summary["final_val_loss"], "train_loss": summary["final_train_loss"],
        "val_count": summary["val_count"], "optimizer_steps": summary["steps"],
        "skipped_steps": summary["skipped_steps"], "resumed_from": summary["resumed_from"],
        "wall_time_s": round(summary["wall_time_s"], 2), "finished": time.time(),
    }
    atomic_write(record_path(out, step.name, seed), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    _log(out, {"event": "run_finish", "step": step.name, "seed": seed, "top1": record["top1"],
               "wall_time_s": record["wall_time_s"]})
    return record


def run_study(plan: StudyPlan, threads: int = 0, jobs: int = 1,
              on_run_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train every (step, seed) of ``plan`` not yet finished; write the outputs; return results.json's data.

    ``threads`` > 0 sets torch's intra-op threads per run (1 is fastest on a machine shared with other
    jobs); ``jobs`` > 1 trains that many runs at once in worker processes (one core each with threads=1).
    ``on_run_done`` is called with each new record (progress reporting).
    """
    if not plan.seeds:
        raise UsageError("a study needs at least one seed; pass --seeds N with N >= 1")
    if jobs < 1:
        raise UsageError(f"jobs={jobs}: a study runs at least one training at a time; use --jobs 1 or more")
    # build every config up front so a bad budget or step fails before anything is written
    configs = {(s.name, seed): train_config(s, seed, plan.budget, plan.data, plan.work_dir, plan.data_root,
                                            plan.device).validate()
               for seed in plan.seeds for s in plan.steps}
    # and open the data once, so a wrong --data-root fails here too instead of after the first write
    load_dataset(plan.data, "train", root=plan.data_root)
    resolve_device(plan.device)  # a device this machine lacks (cuda:3) is refused before anything is written
    check_output_path(plan.out / "study.json")
    plan.out.mkdir(parents=True, exist_ok=True)
    _check_settings(plan.out, study_settings(plan.budget, plan.data))
    _log(plan.out, {"event": "study_start", "command": plan.command, "steps": [s.name for s in plan.steps],
                    "seeds": list(plan.seeds), "jobs": jobs})
    # seed-major: every step gets seed 0 before any step gets seed 1
    pending = [(step, seed) for seed in plan.seeds for step in plan.steps
               if not record_path(plan.out, step.name, seed).exists()]
    trained = 0

    def finished(record: dict[str, Any]) -> None:
        nonlocal trained
        trained += 1
        done = len(configs) - len(pending) + trained
        print(f"study: {record['step']} seed {record['seed']}: top-1 {record['top1']:.2f} "
              f"({done}/{len(configs)} runs done)", file=sys.stderr)
        write_outputs(plan, read_records(plan.out), _log_events(plan.out))
        if on_run_done is not None:
            on_run_done(record)

    try:
        if jobs == 1:
            for step, seed in pending:
                finished(_train_run(configs[(step.name, seed)], step, seed, plan.out, threads))
        else:
            # spawn: a fresh interpreter per worker, never a fork of a process holding torch threads
            pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
            try:
                futures = [pool.submit(_train_run, configs[(step.name, seed)], step, seed, plan.out, threads)
                           for step, seed in pending]
                for future in as_completed(futures):
                    finished(future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown()
    finally:
        _log(plan.out, {"event": "study_end", "runs_trained": trained})
    return write_outputs(plan, read_records(plan.out), _log_events(plan.out))


def _log_events(out: Path) -> list[dict[str, Any]]:
    path = out / LOG_NAME
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill mid-write; the rest of the log is intact
            continue
    return events


__all__ = ["read_records", "record_path", "run_study"]
