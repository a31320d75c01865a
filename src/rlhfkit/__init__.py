"""rlhfkit: the whole RLHF loop, from a laptop CPU to a GPU cluster."""

__version__ = "0.1.0"
