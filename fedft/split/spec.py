"""Where a model is cut: ``SplitSpec(head_blocks, tail_blocks)`` over the transformer block list.

The client holds the embeddings plus the first ``head_blocks`` blocks (the head) and the last
``tail_blocks`` blocks plus the final norm, readout and task head (the tail); the server holds
the blocks in between (the body). ``SplitSpec(0, 0)`` is SFPrompt's headline setting: an
embedding-only head, a tail of final norm + classifier, and every block on the server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SplitSpec:
    """Numbers of transformer blocks kept by the client at the input and at the output side."""

    head_blocks: int = 0
    tail_blocks: int = 0

    def __post_init__(self) -> None:
        for name in ("head_blocks", "tail_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def validate(self, n_layers: int) -> None:
        """Raise ``ValueError`` unless the head and tail fit in a model with ``n_layers`` blocks."""
        if self.head_blocks + self.tail_blocks > n_layers:
            raise ValueError(
                f"head_blocks + tail_blocks = {self.head_blocks} + {self.tail_blocks} exceeds the "
                f"model's {n_layers} transformer blocks; use head_blocks + tail_blocks <= {n_layers}"
            )

    def ranges(self, n_layers: int) -> tuple[range, range, range]:
        """Block indices of the head, body and tail for a model with ``n_layers`` blocks."""
        self.validate(n_layers)
        cut = n_layers - self.tail_blocks
        return range(0, self.head_blocks), range(self.head_blocks, cut), range(cut, n_layers)
