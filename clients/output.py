"""What the CLI leaves behind: one-line messages, and output directories written atomically.

:func:`say` prints one line on stderr, ``cowsim: …``, with control
characters escaped.

:class:`OutputDir` is ``--out DIR``.  It is checked before anything runs — a
missing parent, a parent that is not a writable directory, a target that is a
file: each an :class:`~cowsim.sim.errors.InvalidInput` from ``--out`` — by
creating the temporary directory the results are written into, *beside* the
target (``.DIR.tmp-…`` in the same parent, so the final rename stays on one
file system).  :meth:`OutputDir.commit` renames it into place; an existing
target directory is moved aside first and removed only once the new one is in
place, and Ctrl-C is held off for those few renames.  :meth:`OutputDir.discard`
(also on leaving a ``with`` block by an exception, Ctrl-C included) removes the
temporary directory, so a run that does not finish leaves nothing::

    with OutputDir.prepare(Path("out/run1")) as out:
        result = run(...)                       # may raise, may be interrupted
        (out.path / "result.json").write_text(...)
        out.commit()
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from cowsim.sim import InvalidInput, escape_control

__all__ = ["OutputDir", "say"]


def say(line: str) -> None:
    """One line on stderr, prefixed ``cowsim:``, control characters escaped."""
    sys.stderr.write(f"cowsim: {escape_control(line)}\n")
    sys.stderr.flush()


def _writable_directory(directory: Path) -> bool:
    """Writable, and not marked read-only: root may write anywhere, but a directory with no
    write permission bit at all is taken as a request not to."""
    try:
        mode = directory.stat().st_mode
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP
                                                                    | stat.S_IWOTH))


class OutputDir:
    """A results directory written into a temporary sibling, then renamed into place."""

    def __init__(self, target: Path, path: Path) -> None:
        self.target = target
        self.path = path
        """The temporary directory to write into."""
        self.committed = False

    @classmethod
    def prepare(cls, target: Path, option: str = "--out") -> OutputDir:
        """Check ``target`` and create the temporary directory beside it."""
        if target.name in ("", ".", "..") or target.absolute() == Path.cwd():
            raise InvalidInput(f"{str(target)!r} names no directory that could be created or "
                               "replaced; give a path such as out/run1", source=option)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise InvalidInput(f"{target} exists and is not a directory", source=option)
        parent = target.absolute().parent
        if not parent.is_dir():
            raise InvalidInput(f"directory {parent} does not exist" if not parent.exists()
                               else f"{parent} is not a directory", source=option)
        if not _writable_directory(parent):
            raise InvalidInput(f"directory {parent} is not writable", source=option)
        if target.exists() and not _writable_directory(target):
            raise InvalidInput(f"directory {target} is not writable (it would be replaced)",
                               source=option)
        try:
            temporary = tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent)
        except OSError as exc:
            raise InvalidInput(f"cannot create a directory in {parent}: {exc.strerror or exc}",
                               source=option) from None
        return cls(target, Path(temporary))

    def commit(self) -> None:
        """Put the finished directory in place of the target (replacing an existing one)."""
        blocked = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            old: Path | None = None
            if self.target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-",
                                            dir=self.path.parent))
                os.rename(self.target, old / "previous")
            try:
                os.rename(self.path, self.target)
            except OSError:
                if old is not None:
                    os.rename(old / "previous", self.target)
                    shutil.rmtree(old, ignore_errors=True)
                raise
            self.committed = True
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def discard(self) -> None:
        """Remove the temporary directory (nothing happens after a commit)."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.discard()
