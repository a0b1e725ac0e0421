"""The ``pyrovae`` command: one sub-command per task, options shared by every command that trains."""

from pyrovae.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
