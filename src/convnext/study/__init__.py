"""Studies built on the training engine: the paper's modernization roadmap (Fig. 2) on real data."""

from .plan import StudyPlan, select_steps, study_settings
from .recipe import BUDGETS, RECIPES, STUDY_DATASETS, StudyBudget, get_budget, study_data, train_config
from .report import build_results, format_markdown, parent_step
from .runner import read_records, run_study
from .scaling import config_diff, scale_config

__all__ = [
    "BUDGETS", "RECIPES", "STUDY_DATASETS", "StudyBudget", "StudyPlan", "build_results", "config_diff",
    "format_markdown", "get_budget", "parent_step", "read_records", "run_study", "scale_config", "select_steps",
    "study_data", "study_settings", "train_config",
]
