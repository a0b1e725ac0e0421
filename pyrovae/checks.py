"""Checks of user-given values, in one place, with messages that name what the user typed.

Called from Python, a message names the argument (``z_dim must be ...``); under the ``pyrovae``
command (which wraps its work in :func:`command_line`), the same message names the flag
(``--z-dim must be ...``). Every failed check raises :class:`~pyrovae.errors.PyrovaeError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

from pyrovae.errors import PyrovaeError

__all__ = ["command_line", "finite", "label", "positive", "seed", "whole"]

_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("pyrovae_cli", default=False)

# Python argument -> flag, where the flag is not the argument with dashes
_FLAGS = {"resume": "--resume", "run_dir": "--out", "overwrite": "--overwrite", "model": "--model",
          "iwae_k": "--iwae-k", "n": "--n"}


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within the block, messages name command-line flags instead of Python arguments."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def label(name: str, flag: str | None = None) -> str:
    """``"z_dim"`` from Python, ``"--z-dim"`` (or ``flag``) under the command line."""
    if _CLI.get():
        return flag or _FLAGS.get(name, "--" + name.replace("_", "-"))
    return name


def whole(value: Any, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as a whole number ``>= minimum`` (and ``<= maximum`` when given; ``True``/``False``
    are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PyrovaeError(f"{label(name)} must be a whole number >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise PyrovaeError(f"{label(name)} must be at most {maximum:,}, got {value:,}: is it a typo?")
    return int(value)


def finite(value: Any, name: str, minimum: float | None = None,
           maximum: float | None = None) -> float:
    """``value`` as a finite number (``>= minimum`` and ``<= maximum`` when given)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    low = minimum is not None and ok and value < minimum
    high = maximum is not None and ok and value > maximum
    if not ok or low or high:
        bounds = [f"{op} {b:g}" for op, b in ((">=", minimum), ("<=", maximum)) if b is not None]
        bound = f" {' and '.join(bounds)}" if bounds else ""
        raise PyrovaeError(f"{label(name)} must be a finite number{bound}, got {value!r}")
    return float(value)


def positive(value: Any, name: str) -> float:
    """``value`` as a finite number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise PyrovaeError(f"{label(name)} must be a positive number, got {value!r}")
    return float(value)


def seed(value: Any, name: str = "seed") -> int:
    """A random seed: a whole number in ``[0, 2**32)``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise PyrovaeError(f"{label(name)} must be a whole number in [0, 2**32), got {value!r}")
    return int(value)
