"""The old argument orders of ``effect`` and the sweeps, accepted for one release with a warning.

Every measuring function now reads ``(model, prompts, metric, what to intervene on...)``,
the order :func:`attnlab.measure.score` always had. Calls written for the previous order
(``effect(model, prompts, interventions, metric)``, ``sweep_heads(model, prompts, method,
metric)``, ...) are recognised by the type of the third argument, rebound to the new
names and warned about with a ``DeprecationWarning`` that spells the new call.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["metric_third"]


def metric_third(old_order: tuple[str, ...], is_old: Callable[[tuple, dict], bool], new_call: str):
    """Decorate ``fn(model, prompts, metric, ...)`` so the previous positional order still works.

    ``old_order``: the names the positional arguments after ``prompts`` had before;
    ``is_old(args, kwargs)``: whether a call uses that order.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(model, prompts, *args, **kwargs):
            if args and is_old(args, kwargs):
                warnings.warn(
                    f"{fn.__name__}(model, prompts, {', '.join(old_order)}) is deprecated and will stop working in the "
                    f"next release; call {new_call}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                if len(args) > len(old_order):
                    raise TypeError(f"{fn.__name__}() takes at most {len(old_order)} positional arguments after prompts in the old order")
                for name, value in zip(old_order, args):
                    if name in kwargs:
                        raise TypeError(f"{fn.__name__}() got multiple values for argument {name!r}")
                    kwargs[name] = value
                args = ()
            return fn(model, prompts, *args, **kwargs)

        return call

    return wrap
