"""Atomic output: nothing is ever left half-written.

Every writer in trustfeed writes to a temporary sibling and renames it into place, so a
crash, a full disk or Ctrl-C leaves either the old output or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

__all__ = ["OUTPUT_MARKER", "atomic_dir", "atomic_file", "check_output_dir", "check_output_file", "output_kind", "sha256_file"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_file(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    target = Path(path)
    check_output_file(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            # mkstemp creates 0600; a finished output gets the usual umask-based mode
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


OUTPUT_MARKER = ".trustfeed-output.json"
"""The file that marks a directory as written by trustfeed (and by which writer)."""


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], kind: str = "output", *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    An existing ``path`` is replaced only once the new directory is complete, and only if
    trustfeed wrote it: the finished directory carries :data:`OUTPUT_MARKER` naming its
    ``kind`` (``"trust-snapshot"``, ``"model-bundle"``, ...). Before anything is written the
    target is checked; it may be missing, an empty directory, or an earlier output of the
    same ``kind`` (with ``force``: of any kind). A regular file, a directory trustfeed did not
    write, or the working directory (or one holding it) raises :class:`OutputError`.

    The swap is one atomic exchange of the two directories where the OS offers it (Linux
    ``renameat2``), so the old or the new content is at ``path`` at every instant, even if
    the process dies; elsewhere the old directory is renamed aside first and renamed back
    if the new one cannot be put in place.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "snapshot"
    >>> with atomic_dir(target, "demo") as tmp:
    ...     _ = (tmp / "a.txt").write_text("1")
    >>> sorted(p.name for p in target.iterdir())
    ['.trustfeed-output.json', 'a.txt']
    >>> (target / "notes.txt").write_text("mine") and None
    >>> with atomic_dir(target.parent, "demo") as tmp:
    ...     pass
    Traceback (most recent call last):
    ...
    trustfeed.features.errors.OutputError: ...: not empty and not written by trustfeed: refusing to replace it
    """
    target = Path(os.path.abspath(os.fspath(path) or "."))
    check_output_dir(target, kind, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
        _publishable(tmp)
        # checked again: something may have appeared at the target while we were writing
        check_output_dir(target, kind, force=force)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_dir(path: str | os.PathLike[str], kind: str, *, force: bool = False) -> None:
    """Raise :class:`OutputError` unless a ``kind`` output may replace whatever is at ``path``.

    Allowed: nothing there, an empty directory, an earlier trustfeed output of the same
    ``kind`` (with ``force``: of any kind). Refused: a regular file (or anything not a
    directory), a non-empty directory without a readable trustfeed marker, the working
    directory or a directory holding it.
    """
    target = Path(os.path.abspath(os.fspath(path) or "."))
    if not os.fspath(path):
        raise OutputError("''", "an empty output path")
    if target == Path(target.anchor):
        raise OutputError(str(target), "refusing to replace the file system root")
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents:
        raise OutputError(str(target), "refusing to replace the working directory (or a directory holding it)")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(str(target), f"{parent} is a file, not a directory")
    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_dir():
        raise OutputError(str(target), "exists and is not a directory: refusing to replace it")
    try:
        with os.scandir(target) as entries:
            empty = next(entries, None) is None
    except OSError as error:
        raise OutputError(str(target), f"cannot be listed ({error.strerror})") from None
    if empty:
        return
    written_by = output_kind(target)
    if written_by is None:
        raise OutputError(str(target), "not empty and not written by trustfeed: refusing to replace it")
    if written_by != kind and not force:
        raise OutputError(
            str(target), f"holds a trustfeed {written_by!r} output, not a {kind!r} one: use --force to replace it"
        )


def check_output_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`OutputError` if ``path`` cannot take a file: empty, a directory, under a file."""
    if not os.fspath(path):
        raise OutputError("''", "an empty output path")
    target = Path(path)
    if target.is_dir():
        raise OutputError(str(target), "is a directory, expected a file path")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(str(target), f"{parent} is a file, not a directory")


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The ``kind`` a trustfeed output directory was written as, ``None`` if it is not one."""
    marker = Path(path) / OUTPUT_MARKER
    try:
        if not marker.is_file() or marker.stat().st_size > 4096:
            return None
        kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _swap_into_place(staged: Path, target: Path) -> None:
    """Put the finished ``staged`` directory at ``target`` (see :func:`atomic_dir`)."""
    if not os.path.lexists(target):
        os.replace(staged, target)
        return
    if _exchange(staged, target):
        # the old content now sits at ``staged``; the caller removes it on failure too
        _remove_tree(staged)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    aside.rmdir()
    os.replace(target, aside)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove_tree(aside)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns ``False`` where the C library or the file system does not offer it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(second))


def _umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    # Linux reports it in /proc; os.umask can only read it by setting it, which would race
    # with files created by other threads in between
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0)
    os.umask(current)
    return current


def _publishable(directory: Path) -> None:
    """Give a finished temporary directory (0700 from mkdtemp) and its files the umask modes."""
    mask = _umask()
    os.chmod(directory, 0o777 & ~mask)
    for path in directory.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
