"""Where a warning should point: the user's line, however deep inside attnlab (and torch) it was raised.

A fixed ``stacklevel`` is right for one call path only; the same warning is reached from a
measurement, from ``run`` and from a module pre-hook inside ``torch.nn.Module.__call__``.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

__all__ = ["user_stacklevel"]

_SKIPPED = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # attnlab
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,  # torch: Module.__call__, no_grad decorators
    os.path.dirname(os.path.abspath(contextlib.__file__)) + os.sep + "contextlib.py",
)


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called right where this is called: the first frame outside the above."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame, level = frame.f_back, level + 1
    return level
