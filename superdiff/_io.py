"""Atomic file writes: each file goes to a temp file beside it, then is renamed; nothing half-written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

Writer = Callable[[Path], None]  # writes a file's whole content to the path it is given
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stage(path: Path, write: Writer) -> Path:
    """Write path's content to a new temp file in path's folder (so the rename is atomic); return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomically(
    writes: Sequence[tuple[Path, Writer]], before_rename: Callable[[], None] | None = None
) -> None:
    """Stage every file, then rename them in order; on an error no file is replaced and no temp is left."""
    staged = []
    try:
        for path, write in writes:
            staged.append((stage(Path(path), write), Path(path)))
        if before_rename is not None:
            before_rename()
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def png(obj, dpi: int = 120) -> Writer:
    """Writer of a PIL image or a matplotlib figure as PNG."""
    if hasattr(obj, "savefig"):
        return lambda tmp: obj.savefig(tmp, format="png", bbox_inches="tight", dpi=dpi)
    return lambda tmp: obj.save(tmp, format="png")


def text(content: str) -> Writer:
    """Writer of a UTF-8 text."""
    return lambda tmp: tmp.write_text(content, encoding="utf-8")


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files a crashed writer left in folder; returns how many."""
    stale = list(folder.glob(f".*{TEMP_SUFFIX}")) if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)
