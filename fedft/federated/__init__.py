"""Federated orchestration: the Flower apps and engines, the round loop, payloads and aggregation."""
