"""Errors: what cowsim says when input is wrong, too big, or refused by the simulated kernel.

Every input from outside (a scenario file, a workload spec, a command-line
flag, a gRPC message) is validated by the library, and every way it can be
wrong ends in one exception type, :class:`InvalidInput`, that carries

* ``source``: where the input came from (a file name, ``--kernel``, a request
  field), or None;
* ``path``: the field path inside it, as parts (``("processes", 0,
  "memory")``), rendered ``processes[0].memory``;
* ``message``: what is wrong, in one sentence.

The command line prints ``str(error)`` (one line: control characters are
escaped, so a newline inside an op name cannot split it) and exits 2; a gRPC
server turns the same object into an INVALID_ARGUMENT status with a field
violation (``error.field`` and ``error.message``).  :class:`BudgetExceeded`
is the subclass for input that is valid but too big to run (the estimate is in
the message): RESOURCE_EXHAUSTED for a server.

This module is a leaf: it imports nothing from cowsim, so every other module
can raise these without an import cycle.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

__all__ = [
    "BudgetExceeded",
    "CapacityError",
    "InvalidInput",
    "KernelOpError",
    "KernelVersionError",
    "escape_control",
    "format_path",
]

PathPart = str | int


def escape_control(text: str) -> str:
    """``text`` with control and format characters escaped (``\\n``, ``\\x1b``, ``\\u202e``)."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char == " " or unicodedata.category(char)[0] not in "CZ":
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def format_path(path: Sequence[PathPart]) -> str:
    """``("processes", 0, "memory")`` → ``processes[0].memory``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class InvalidInput(ValueError):  # noqa: N818 - it is a value, not an error code (like InvalidURL)
    """Input that cowsim refuses: where it came from, the field path, and what is wrong."""

    def __init__(self, message: str, *, path: Sequence[PathPart] = (), source: str | None = None,
                 op: str | None = None) -> None:
        self.message = " ".join(str(message).split())
        self.path: tuple[PathPart, ...] = tuple(path)
        self.source = source
        self.op = op
        """The scenario op of the step the path points into, when there is one."""
        super().__init__(self.message)

    @property
    def field(self) -> str:
        """The field path as text (``processes[0].memory``, ``steps[3].pages``); "" for the
        input as a whole."""
        return format_path(self.path)

    @property
    def step(self) -> int | None:
        """The scenario step index, when the path starts ``steps[i]``."""
        if len(self.path) >= 2 and self.path[0] == "steps" and isinstance(self.path[1], int):
            return self.path[1]
        return None

    def within(self, *prefix: PathPart, source: str | None = None) -> InvalidInput:
        """The same error with ``prefix`` put before its path (and ``source`` if it had none)."""
        error = type(self).__new__(type(self))
        error.__dict__.update(self.__dict__)
        error.path = (*prefix, *self.path)
        if error.source is None:
            error.source = source
        error.args = (error.message,)
        return error

    def __str__(self) -> str:
        parts = [self.source] if self.source else []
        step = self.step
        if step is not None:
            parts.append(f"step {step}" + (f" ({self.op})" if self.op else ""))
            rest = format_path(self.path[2:])
            if rest:
                parts.append(f"field {rest!r}")
        elif self.path:
            parts.append(f"field {self.field!r}")
        parts.append(self.message)
        return escape_control(": ".join(parts))


class BudgetExceeded(InvalidInput):
    """Valid input too big to run here: the model memory or the work it needs exceeds the
    budget (the estimate is in the message).  A server answers RESOURCE_EXHAUSTED."""


class CapacityError(BudgetExceeded):
    """The kernel model was asked to hold more page frames than it may."""


class KernelOpError(InvalidInput):
    """An operation the simulated kernel refuses (EINVAL, EFAULT, SIGSEGV).

    ``field`` names the scenario field at fault (``proc``, ``region``, ``pages`` …),
    so a scenario runner can report the step and field in one line.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, path=(field,) if field else ())
        self.args = (field, message)  # type(e)(*e.args) rebuilds it (simpy, pickle)


class KernelVersionError(InvalidInput):
    """A kernel name that is neither a real release line cowsim models, an era id nor a
    what-if."""

    """Raised without a path; the caller places it (``field 'kernel'`` of a file, or
    ``--kernel``) with :meth:`InvalidInput.within`."""
