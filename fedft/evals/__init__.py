"""Evaluation harnesses, one module each, registered in :data:`EVALUATIONS`."""

from fedft.evals import finetunebench as finetunebench  # noqa: F401
from fedft.evals.base import EVALUATIONS, Evaluation, register_evaluation
from fedft.evals.finetunebench import FineTuneBench, FineTuneBenchJudge, FineTuneBenchOptions

__all__ = ["EVALUATIONS", "Evaluation", "FineTuneBench", "FineTuneBenchJudge", "FineTuneBenchOptions",
           "register_evaluation"]
