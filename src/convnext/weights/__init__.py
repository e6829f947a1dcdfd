"""Weight interop: the official, timm, torchvision and Hugging Face layouts <-> ours, and weight files.

Writing a whole model (with its metadata, or as a Hugging Face folder) is ``convnext.checkpoint.export_weights``.
"""

from .io import LoadReport, describe_architecture, guess_model_name, load_weights, read_weights, write_weights
from .layouts import LAYOUTS, detect_layout

__all__ = ["LAYOUTS", "LoadReport", "describe_architecture", "detect_layout", "guess_model_name", "load_weights",
           "read_weights", "write_weights"]
