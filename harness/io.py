"""Files the harness writes, written atomically and kept inside their output folder.

Every file is written to a temporary name beside its target and renamed over it: a reader (another process, a rerun
after kill -9, a report while a sweep runs) sees the old file or the new one, never a part; a failed write (a full
disk) leaves the old file as it was and no temporary behind. Paths built from data (task names, checkpoint names,
budget keys) go through `inside` (safe_name), so a name such as `../x` cannot place a file outside the folder asked
for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path


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


def safe_name(text: str) -> str:
    """A name from data (a task, checkpoint or budget) as one file name inside its folder: path separators and
    control characters become '_', and so does a leading '.' (so '.', '..' and hidden names cannot arise); an
    over-long name is cut and told apart by a hash of the whole."""
    name = re.sub(r"[/\\\x00-\x1f]", "_", str(text)) or "_"
    name = "_" + name[1:] if name.startswith(".") else name
    if len(name.encode()) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = name.encode()[:MAX_NAME // 2].decode(errors="ignore") + "-" + digest
    return name


MAX_NAME = 200  # bytes: below the 255 of common file systems, leaving room for the temporary's prefix and suffix


def inside(root: Path, *names: str) -> Path:
    """root / names, each name made a safe file name (safe_name): a path built from data stays inside root."""
    return Path(root).joinpath(*map(safe_name, names))
