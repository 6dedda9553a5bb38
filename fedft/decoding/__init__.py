"""Decoding methods, one module each, registered in :data:`DECODERS`."""

from fedft.decoding import eft as eft  # noqa: F401
from fedft.decoding import tqstar as tqstar  # noqa: F401
from fedft.decoding import value_guided as value_guided  # noqa: F401
from fedft.decoding.base import DECODERS, DecodingMethod, LogitCombiner, generate_combined, register_decoder
from fedft.decoding.eft import EFT

__all__ = ["DECODERS", "EFT", "DecodingMethod", "LogitCombiner", "generate_combined", "register_decoder"]
