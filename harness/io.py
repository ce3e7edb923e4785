"""Files the harness writes, written atomically and kept inside their output folder.

Every file is written to a temporary name beside its target and renamed over it: a reader (another process, a rerun
after kill -9, a report while a sweep runs) sees the old file or the new one, never a part; a failed write (a full
disk) leaves the old file as it was and no temporary behind. Paths built from data (task names, checkpoint names,
budget keys) go through `inside`, so a name such as `../x` cannot place a file outside the folder asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ..model_adapters.errors import ConfigError


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) fills a temporary file, which then replaces `path`; on any failure the temporary is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, data, default=None) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=default) + "\n")


def save_figure_atomic(fig, path: Path, **kwargs) -> None:
    """A matplotlib figure saved atomically (its format named, since the temporary name hides the suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def inside(root: Path, *parts: str) -> Path:
    """root / parts, refused unless it stays inside root (parts come from data: task and checkpoint names)."""
    root = Path(root)
    path = root.joinpath(*parts)
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and base not in resolved.parents:
        raise ConfigError(f"{'/'.join(parts)!r} would place a file outside {root}; names used in paths may not "
                          "contain '..' or start with '/'")
    return path
