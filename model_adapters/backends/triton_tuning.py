"""Autotuning once per machine, not once per process: processes that share Triton's cache take turns to tune.

Triton's autotuner times a kernel's configurations and keeps the fastest; with TRITON_CACHE_AUTOTUNING=1 it stores
that choice in its cache directory and a later process reads it instead of timing again. Timings are noisy, so two
processes that tune the same kernel *at the same time* (the workers of `implicit-eval sweep --workers N`) can
choose different tiles, which sum in another order and disagree in the last bits. Holding a file lock per kernel
and tuning key around the autotuner's cache look-up makes the first process tune and store, and every other one
wait and read its choice: the same numbers as one process, without a warm-up phase that the others wait for.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (flock), released when the block ends or the process dies. Where no lock
    can be had (a read-only cache, a file system without flock), a warning, and the block runs unlocked: each
    process then tunes on its own, as without this module."""
    import fcntl

    fd = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        logger.warning("cannot lock %s (%s): this process tunes Triton's kernels on its own, and two processes "
                       "tuning at once may choose different tiles", path, exc)
        if fd is not None:
            os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


def lock_path(cache_dir: str | Path, kernel: str, tuning_key: object) -> Path:
    """One lock file per kernel and tuning key, so that tuning different kernels still runs side by side."""
    name = hashlib.sha256(f"{kernel}-{tuning_key}".encode()).hexdigest()[:24]
    return Path(cache_dir) / "autotune-locks" / f"{name}.lock"


def serialised(check: Callable) -> Callable:
    """Autotuner.check_disk_cache(self, tuning_key, configs, bench_fn), run under the kernel's and key's lock."""

    @functools.wraps(check)
    def locked(self, tuning_key, *args, **kwargs):
        from triton import knobs

        with file_lock(lock_path(knobs.cache.dir, getattr(self.base_fn, "__name__", "kernel"), tuning_key)):
            return check(self, tuning_key, *args, **kwargs)

    cast(Any, locked).serialised = True  # the mark of an installed lock (install is idempotent)
    return locked


def install() -> bool:
    """Serialise Triton's autotuning cache look-ups across processes (idempotent). False where this Triton has no
    such look-up (another version): each process then tunes on its own, as before."""
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return False
    check = getattr(Autotuner, "check_disk_cache", None)
    if check is None:
        return False
    if not getattr(check, "serialised", False):
        Autotuner.check_disk_cache = serialised(check)
    return True
