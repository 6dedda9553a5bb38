"""fedft: federated and split-learning fine-tuning simulator for pre-trained transformers."""

__version__ = "0.1.0"
