"""Vanilla split learning: clients one after another in a random order each round, a trainable
body shared by all, and the client part handed from each client to the next (no averaging)."""

from __future__ import annotations

from typing import Any

from fedft.strategies.base import random_order, register_strategy
from fedft.strategies.splitfed import SplitFed


@register_strategy
class SplitLearning(SplitFed):
    name = "sl"
    description = ("vanilla split learning: clients one after another, trainable body, the client part "
                   "handed on")
    method = "full_ft"
    body_mode = "shared"
    table = "splitfed"

    order = random_order

    def groups(self, pids: list[int]) -> list[list[int]]:
        return [[p] for p in pids]

    def combine(self, server: Any, round: int, results: list[Any]) -> None:
        for res in results:
            if server.accept(res):
                server.hand_on(res)
