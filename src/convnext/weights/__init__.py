"""Weight interop: the official, timm, torchvision and Hugging Face layouts <-> ours."""

from .io import LoadReport, describe_architecture, export_weights, guess_model_name, load_weights, read_weights
from .layouts import LAYOUTS, detect_layout

__all__ = ["LAYOUTS", "LoadReport", "describe_architecture", "detect_layout", "export_weights",
           "guess_model_name", "load_weights", "read_weights"]
