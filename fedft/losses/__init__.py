"""Training losses, one module each, registered in :data:`LOSSES`."""

from fedft.losses import dpo as dpo  # noqa: F401
from fedft.losses import mftcoder as mftcoder  # noqa: F401
from fedft.losses.base import LOSSES, Loss, register_loss
from fedft.losses.mftcoder import MODES, MultiTaskLoss, token_nll

__all__ = ["LOSSES", "MODES", "Loss", "MultiTaskLoss", "register_loss", "token_nll"]
