"""What a study is: its roadmap steps and seeds, budget and data, and the settings that decide its results.

Both the runner (which trains the plan) and the report (which summarises it) need this; keeping it
here lets the runner import the report and never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models.roadmap import ROADMAP, RoadmapStep
from .recipe import DATA_ALIASES, RECIPES, StudyBudget, recipe_values, study_data


@dataclass
class StudyPlan:
    out: Path
    work_dir: Path
    budget: StudyBudget
    data: str
    steps: tuple[RoadmapStep, ...]
    seeds: tuple[int, ...]
    data_root: str | None = None
    device: str = "auto"
    command: str | None = None

    def __post_init__(self) -> None:
        # one name per dataset from here on (the registry's), whatever spelling the caller used
        self.data = study_data(self.data)


def select_steps(names: Sequence[str] | None) -> tuple[RoadmapStep, ...]:
    """Roadmap steps by name, in roadmap order; all of them for None."""
    if not names:
        return ROADMAP
    known = {s.name: s for s in ROADMAP}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown roadmap step(s) {unknown}; valid steps: {', '.join(known)}")
    wanted = set(names)
    return tuple(s for s in ROADMAP if s.name in wanted)


def study_settings(budget: StudyBudget, data: str) -> dict[str, Any]:
    """Everything that decides a run's result besides (step, seed): two studies with different
    settings must never share records."""
    return {
        "budget": budget.to_dict(), "steps_per_run": budget.steps, "data": study_data(data),
        "recipes": {name: recipe_values(name, budget) for name in RECIPES},
    }


# How earlier versions recorded each recipe's optimizer in study.json: a description, before the
# optimizer became engine config (opt.optimizer, opt.momentum) that RECIPES itself carries.
_OLD_OPTIMIZER_TEXT = {"SGD, momentum 0.9": {"opt.optimizer": "sgd", "opt.momentum": 0.9},
                       "AdamW, betas (0.9, 0.999)": {"opt.optimizer": "adamw"}}


# Budget fields that earlier versions did not record, and the value every study made then had.
_NEW_BUDGET_FIELDS = {"on_device": False, "randaugment": True, "regularisation": "paper"}


def upgrade_settings(recorded: dict[str, Any]) -> dict[str, Any]:
    """Settings as an earlier version wrote them to study.json, in today's form, so that a study made
    then (the committed results/roadmap among them) still resumes: the hyphenated data name and the
    optimizer descriptions become what they meant. Anything else is left as recorded, and so still
    differs from today's settings when it really does."""
    out = dict(recorded)
    if isinstance(out.get("data"), str):
        out["data"] = DATA_ALIASES.get(out["data"], out["data"])
    if isinstance(out.get("budget"), dict):  # budget fields added since, at the values earlier studies ran with
        out["budget"] = {**_NEW_BUDGET_FIELDS, **out["budget"]}
    recipes = out.get("recipes")
    if isinstance(recipes, dict):
        upgraded = {}
        for name, recipe in recipes.items():
            text = recipe.get("optimizer") if isinstance(recipe, dict) else None
            if text in _OLD_OPTIMIZER_TEXT:
                rest = {k: v for k, v in recipe.items() if k != "optimizer"}
                recipe = {**_OLD_OPTIMIZER_TEXT[text], **rest}
            upgraded[name] = recipe
        out["recipes"] = upgraded
    return out


__all__ = ["StudyPlan", "select_steps", "study_settings", "upgrade_settings"]
