"""The model: a Hugging Face backbone wrapped as a task model, and everything that builds one.

``task`` (:class:`TaskModel`, :func:`build_task_model`), ``arch`` (per-architecture adapters),
``prompts`` (:class:`SoftPrompt`), ``loading`` (backbones and preprocessing by name), ``build``
(:func:`build_model`: backbone + method + task model from a config) and ``tiny`` (tiny random
models and batches for tests and examples).
"""

from fedft.model.arch import ARCHS, Arch, arch_for
from fedft.model.build import build_model, set_precision
from fedft.model.loading import LoadedBackbone, load_backbone, load_preprocessor
from fedft.model.prompts import SoftPrompt
from fedft.model.task import ReadoutNorm, TaskModel, build_task_model

__all__ = [
    "ARCHS",
    "Arch",
    "LoadedBackbone",
    "ReadoutNorm",
    "SoftPrompt",
    "TaskModel",
    "arch_for",
    "build_model",
    "build_task_model",
    "set_precision",
    "load_backbone",
    "load_preprocessor",
]
