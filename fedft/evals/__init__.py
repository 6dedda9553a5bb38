"""Evaluation harnesses, one module each, registered in :data:`EVALUATIONS`."""

from fedft.evals.base import EVALUATIONS, Evaluation, register_evaluation

__all__ = ["EVALUATIONS", "Evaluation", "register_evaluation"]
