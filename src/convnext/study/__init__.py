"""Studies built on the training engine: the paper's modernization roadmap (Fig. 2) on real data."""

from .recipe import BUDGETS, RECIPES, StudyBudget, get_budget, train_config
from .report import build_results, format_markdown, parent_step
from .runner import StudyPlan, read_records, run_study, select_steps
from .scaling import config_diff, scale_config

__all__ = [
    "BUDGETS", "RECIPES", "StudyBudget", "StudyPlan", "build_results", "config_diff",
    "format_markdown", "get_budget", "parent_step", "read_records", "run_study", "scale_config", "select_steps",
    "train_config",
]
