"""Atomic file writes: each file goes to a temp file beside it, then is renamed; nothing half-written."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

Writer = Callable[[Path], None]  # writes a file's whole content to the path it is given
TEMP_SUFFIX = ".superdiff.tmp"  # the kit's own temp names: .<file name>.<random>.superdiff.tmp
NAME_KEPT = 100  # characters of the name a temp name repeats: a name near NAME_MAX (255) still fits


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stage(path: Path, write: Writer) -> Path:
    """Write path's content to a new temp file in path's folder (so the rename is atomic); return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:NAME_KEPT]}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


# kill, and a closed terminal or ssh session; Ctrl-C already raises KeyboardInterrupt
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def terminate_as_exit():
    """While it lasts, SIGTERM and SIGHUP raise SystemExit (in the main thread), so ``finally`` cleanup
    still runs; a signal that is ignored or has someone else's handler is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = [s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_DFL]

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for signum in ours:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, signal.SIG_DFL)


def check_targets(paths: Sequence[Path], option: str | None = None) -> None:
    """No target is a folder (a rename onto it would fail after the earlier files were replaced); with
    ``option``, a ValueError naming the command-line option before any work, else an IsADirectoryError."""
    for path in paths:
        if Path(path).is_dir():
            if option:
                raise ValueError(
                    f"{option}: {str(path)!r} is a folder in the way of a file to write; "
                    f"choose another {option}"
                )
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way of a file to write", str(path))


def user_path(text: str) -> Path:
    """argparse's type of a path option: ``~`` or ``~user`` expanded, as the shell does for ``--out ~/x``
    but not for ``--out=~/x``; an empty text or an unknown user's home is refused."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user of a user without a home here
        raise argparse.ArgumentTypeError(f"cannot expand {Path(text).parts[0]!r}: no such user") from None


def user_source(text: str) -> str:
    """argparse's type of an option that takes a Hub id or a local path: a path's ``~`` expanded as by
    :func:`user_path` (so ``--model=~/sd`` is the folder); a Hub id or a shipped name is left as it is."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a name or a path, got {text!r}")
    return str(user_path(text)) if text.startswith("~") else text


def expanded(path) -> Path:
    """``path`` with ``~`` expanded where that names a home folder, absolute."""
    try:
        path = Path(path).expanduser()
    except RuntimeError:  # ~user of no user: a folder of that name, as open() would take it
        path = Path(path)
    return path.absolute()


def nearest_existing(folder: Path) -> Path:
    """folder (``~`` expanded, absolute) or its nearest ancestor that exists: where it would be made."""
    folder = expanded(folder)
    return next(p for p in (folder, *folder.parents) if p.exists())


def check_name_lengths(paths: Sequence[Path], option: str) -> None:
    """ValueError naming ``option`` for a file name longer than its filesystem takes (found before the work,
    not at the rename after it)."""
    for path in paths:
        path = expanded(path)
        try:
            limit = os.pathconf(nearest_existing(path.parent), "PC_NAME_MAX")
        except (AttributeError, OSError, ValueError):  # no pathconf (Windows): the usual limit
            limit = 255
        size = len(os.fsencode(path.name))
        if size > limit:
            raise ValueError(
                f"{option}: the file name {path.name[:16] + '…' + path.name[-24:]!r} has {size} bytes, more "
                f"than the {limit} this filesystem takes; choose a shorter {option}"
            )


def check_no_broken_link(folder: Path, name: str) -> None:
    """ValueError naming ``name`` if ``folder`` or a folder above it is a link to nothing: mkdir would fail
    on it with "File exists", after the work."""
    folder = expanded(folder)
    for path in (folder, *folder.parents):
        if path.is_symlink() and not path.exists():
            real = os.path.realpath(path)  # the end of a chain of links
            if os.path.islink(real):
                raise ValueError(f"{name}: {str(path)!r} is a loop of links; choose another {name}")
            raise ValueError(
                f"{name}: {str(path)!r} is a link to {real!r}, which does not exist; make that folder or "
                f"choose another {name}"
            )


def check_writable(folder: Path, name: str) -> None:
    """ValueError naming ``name`` unless ``folder`` is, or can be made, a folder this process can write to;
    probed with a temp folder in its nearest existing ancestor, removed at once (nothing left behind)."""
    check_no_broken_link(folder, name)
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise ValueError(f"{name}: {str(existing)!r} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(prefix=".probe.", suffix=TEMP_SUFFIX, dir=existing).cleanup()
    except OSError as err:
        raise ValueError(f"{name}: cannot write in {str(existing)!r} ({err.strerror})") from None


@contextmanager
def scratch_folder(parent: Path, prefix: str):
    """A temp folder in parent (made if new) for files made one by one and written together at the end
    (:func:`copy_of` into :func:`write_atomically`); removed whatever happens, SIGTERM included."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=parent))
    with terminate_as_exit():
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def copy_of(source: Path) -> Writer:
    """A writer (for :func:`write_atomically`) that copies source."""
    return lambda target: shutil.copyfile(source, target)


def write_atomically(
    writes: Sequence[tuple[Path, Writer]],
    before_rename: Callable[[], None] | None = None,
    exclusive: bool = False,
) -> None:
    """Stage every file, then rename them in order; on an error no file is replaced and no temp is left.

    ``exclusive``: never replace a file, also one made while the files were staged; if any target exists
    (a dangling link included), none is written and FileExistsError names it.
    """
    check_targets([path for path, _ in writes])
    with terminate_as_exit():
        _stage_and_rename(writes, before_rename, exclusive)


def _stage_and_rename(writes, before_rename, exclusive: bool) -> None:
    staged, published = [], []
    try:
        for path, write in writes:
            staged.append((stage(Path(path), write), Path(path)))
        if before_rename is not None:
            before_rename()
        for tmp, path in staged:
            if exclusive:
                _publish_new(tmp, path)
                published.append(path)
            else:
                os.replace(tmp, path)
    except BaseException:
        for path in published:  # files this call made: the set is written whole or not at all
            path.unlink(missing_ok=True)
        raise
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _publish_new(tmp: Path, path: Path) -> None:
    """Give tmp's file the name path, which must not exist: a hard link fails if it does, with no race."""
    exists = FileExistsError(errno.EEXIST, "File exists", str(path))
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists from None
    except OSError:  # a filesystem without hard links: check, then rename (a small window)
        if os.path.lexists(path):
            raise exists from None
        os.replace(tmp, path)


def png(obj, dpi: int = 120, info: dict[str, str] | None = None) -> Writer:
    """Writer of a PIL image (``info``: its PNG text chunks) or a matplotlib figure as PNG."""
    if hasattr(obj, "savefig"):
        return lambda tmp: obj.savefig(tmp, format="png", bbox_inches="tight", dpi=dpi)
    from PIL.PngImagePlugin import PngInfo

    chunks = PngInfo()
    for key, value in (info or {}).items():
        chunks.add_itxt(key, value)  # international text: UTF-8 prompts
    return lambda tmp: obj.save(tmp, format="png", pnginfo=chunks)


def text(content: str) -> Writer:
    """Writer of a UTF-8 text."""
    return lambda tmp: tmp.write_text(content, encoding="utf-8")


def remove_stale_temps(folder: Path) -> int:
    """Delete the kit's own temp files a crashed writer left in folder (no one else's); returns how many."""
    stale = list(folder.glob(f".*{TEMP_SUFFIX}")) if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)
