"""``python -m rlhfkit`` (and ``torchrun -m rlhfkit``): the same as the ``rlhfkit`` command."""

from rlhfkit.cli import main

main()
