"""Using a trained model: image loading, prediction and export.

Submodules import torch/PIL/onnx on use, so ``import convnext.infer`` stays cheap.
"""
