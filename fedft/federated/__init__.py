"""Federated orchestration: the body service (per-batch split traffic) and, later, the Flower apps."""
