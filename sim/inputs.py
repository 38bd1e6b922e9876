"""Reading input documents: a file or text → plain data, or one :class:`InvalidInput`.

Scenario scripts and workload specs arrive the same way — a file, YAML or
JSON, written by someone cowsim must not trust — so one set of functions
reads them, and one turns pydantic's validation errors into cowsim's error:

* :func:`read_text` reads at most :data:`MAX_DOCUMENT_BYTES` from a regular
  file (``/dev/zero`` or a FIFO would never end);
* :func:`parse_document` parses the text and walks it once, refusing
  documents nested deeper than :data:`MAX_DEPTH` or with more than
  :data:`MAX_NODES` values *as expanded* (a YAML "billion laughs" of aliases
  is small on disk and exponential to validate);
* :func:`invalid_from_pydantic` names the field of the first validation
  error as a path into the document the user wrote: union tags that pydantic
  puts into its locations (``workloads.0.forking_server.requests``, or
  ``pages.int`` for one arm of a union) are dropped, so the path is
  ``processes[0].workloads[0].requests`` and never ``(top level)``.

Every error is an :class:`~cowsim.sim.errors.InvalidInput` whose ``source``
is the file name (or whatever name the caller gave the text)::

    data = parse_document(read_text("spec.yaml"), "spec.yaml")
    try:
        WorkloadSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc, data, source="spec.yaml") from None
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cowsim.sim.errors import InvalidInput, PathPart

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_NODES",
    "DocumentError",
    "input_path",
    "invalid_from_pydantic",
    "parse_document",
    "read_text",
]

MAX_DOCUMENT_BYTES = 4 << 20
"""The largest input file read (4 MiB; the biggest example is under 2 KiB)."""
MAX_DEPTH = 64
"""The deepest nesting of mappings and lists accepted."""
MAX_NODES = 200_000
"""The most values (mapping entries and list items, aliases expanded) a document may hold."""

DISCRIMINATORS = ("kind", "op")
"""Fields whose value selects a model (workload ``kind``, scenario ``op``): pydantic puts that
value into error locations, and :func:`input_path` takes it out again."""

_MAX_KEY_CHARS = 60


class DocumentError(InvalidInput):
    """A document that cannot be read or parsed, or is too big or too deep to validate."""


def read_text(path: str | Path) -> str:
    """The text of a regular file of at most :data:`MAX_DOCUMENT_BYTES` (UTF-8)."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise DocumentError("cannot read file: not a regular file", source=name)
            raw = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise DocumentError(f"cannot read file: {exc.strerror or exc}", source=name) from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"cannot read file: larger than {MAX_DOCUMENT_BYTES >> 20} MiB",
                            source=name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"cannot read file: not UTF-8 text ({exc.reason} at byte {exc.start})",
                            source=name) from None


def parse_document(text: str, name: str) -> Any:
    """YAML (or JSON when ``name`` ends in ``.json``) → plain data, checked for size and depth."""
    is_json = name.endswith(".json")
    if len(text) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"larger than {MAX_DOCUMENT_BYTES >> 20} MiB", source=name)
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError, OverflowError) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DocumentError(f"not valid {'JSON' if is_json else 'YAML'}: {detail}",
                            source=name) from None
    _check_shape(data, name)
    return data


def _check_shape(data: Any, name: str) -> None:
    """Refuse documents too deep or too big once aliases are expanded (iteratively: no
    recursion, and it stops at the first limit crossed)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Sequence[Any] = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH:
            raise DocumentError(f"nested deeper than {MAX_DEPTH} levels", source=name)
        nodes += len(children)
        if nodes > MAX_NODES:
            raise DocumentError(f"more than {MAX_NODES:,} values (YAML aliases count each time "
                                "they are used)", source=name)
        stack.extend((child, depth + 1) for child in children)


def _key(part: Any) -> PathPart:
    if isinstance(part, int) and not isinstance(part, bool):
        return part
    text = str(part)
    return text if len(text) <= _MAX_KEY_CHARS else text[:_MAX_KEY_CHARS - 3] + "..."


def input_path(loc: Sequence[Any], data: Any, *, keep_last: bool = False) -> tuple[PathPart, ...]:
    """A pydantic error location as a path into ``data``, the document the user wrote.

    Parts that are not keys or indices of the document are pydantic's own tags
    (the discriminator value of a tagged union, the arm of a plain union such
    as ``int`` or ``list[...]``, ``[key]`` of a mapping's keys): dropped.
    ``keep_last`` keeps the final part even when the document lacks it (a
    missing field).
    """
    path: list[PathPart] = []
    current = data
    tag_skipped = False  # a union's tag comes once, right after the index that reached it
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(current, dict):
            if not tag_skipped and isinstance(part, str) and any(
                    current.get(field) == part for field in DISCRIMINATORS):
                tag_skipped = True
                continue
            if part in current:
                path.append(_key(part))
                current, tag_skipped = current[part], False
                continue
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            path.append(part)
            current, tag_skipped = current[part], False
            continue
        if last and keep_last:
            path.append(_key(part))
        # Otherwise a tag of pydantic's own (a union arm such as ``int``, ``[key]``): skipped.
    return tuple(path)


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def invalid_from_pydantic(exc: ValidationError, data: Any, *, source: str | None,
                          error_type: type[InvalidInput] = InvalidInput) -> InvalidInput:
    """The first error of ``exc`` as one ``error_type`` naming the field in ``data``.

    When several errors share that field (a value that fits no arm of a union)
    the message says what each arm wanted.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = input_path(first["loc"], data, keep_last=first["type"] == "missing")
    same = [error for error in errors
            if input_path(error["loc"], data, keep_last=error["type"] == "missing") == path]
    messages = list(dict.fromkeys(_message(error) for error in same))
    if len(messages) > 1 and len(first["loc"]) > len(path):
        message = "fits none of the allowed forms: " + "; or ".join(messages[:4])
    else:
        message = messages[0]
    return error_type(message, path=path, source=source)
