"""Datasets: pure partitioning functions and raw readers for the offline assets."""
