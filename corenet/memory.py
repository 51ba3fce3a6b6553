"""A bound on what one array may take: corenet refuses, with an error naming the layer,
an array larger than this machine's memory (or than the address space the process may
use, `ulimit -v`) before numpy tries to allocate it.

Such sizes come from a zero-stride view that claims terabytes (np.broadcast_to), a
padding or a size of 10⁹ in a config, a model file's config: numpy would raise a bare
MemoryError (or, with overcommit, the process would be killed on first touch).

>>> check_allocation("linear", "the output", (2 ** 40, 2 ** 20), "float32")
Traceback (most recent call last):
...
corenet.errors.ShapeError: linear: the output of shape (1099511627776, 1048576) float32 ...
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np

from corenet.errors import ShapeError


@functools.cache
def physical_memory() -> int:
    """Bytes of RAM of this machine (2⁴⁸ where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 48


def memory_limit() -> int:
    """Bytes one array may take at most: the RAM, or the process's address-space limit
    when it is lower (read at each call: a process may lower it at any time)."""
    limit = physical_memory()
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, ValueError, OSError):  # no such limit on this system
        return limit
    return limit if soft == resource.RLIM_INFINITY or soft < 0 else min(limit, soft)


def check_allocation(owner: str, what: str, shape, dtype) -> None:
    """A ShapeError naming ``owner`` if an array of ``shape`` and ``dtype`` cannot fit."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    limit = memory_limit()
    if size > limit:
        raise ShapeError(f"{owner}: {what} of shape {tuple(shape)} {np.dtype(dtype)} would "
                         f"take {readable(size)}, more than the memory this process may use "
                         f"({readable(limit)})")


def readable(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit != "bytes" else f"{size} bytes"
        size /= 1024
    return f"{size:.1f} PiB"


def check_parameters(owner: str, shapes: dict) -> dict:
    """``shapes`` ({parameter name: shape}, from Layer.parameter_shapes), each checked to
    fit before a constructor draws the initial values (in float64)."""
    for name, shape in shapes.items():
        check_allocation(owner, f"parameter {name!r}", shape, np.float64)
    return shapes
