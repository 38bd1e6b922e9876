"""Errors the service answers with: one gRPC status, one line, and google.rpc details.

Every refusal inside the service is a :class:`ServiceError` — a status code, a
one-line message (control characters escaped) and the AIP-193 details a client
can act on:

* INVALID_ARGUMENT with a ``google.rpc.BadRequest`` whose field violations name
  the field path: the library's :class:`~cowsim.sim.InvalidInput` becomes one
  (:func:`invalid_input`), its ``field`` (``processes[0].memory``,
  ``steps[3].pages``, ``kernel``, ``seed``) or, for the document as a whole, the
  request field it came in (``spec``);
* RESOURCE_EXHAUSTED with a ``google.rpc.QuotaFailure`` whose violation's
  subject names the limit (``max_frames``, ``max_sim_seconds``,
  ``max_queued_runs``, ``budget``) — for the library's
  :class:`~cowsim.sim.BudgetExceeded` too;
* anything else (NOT_FOUND, UNAVAILABLE …) with just the message.

The message of an InvalidInput is ``str(error)``: the same line the CLI prints
for the same input, so a remote ``cowsim submit`` can say exactly what a local
``cowsim run`` says.  :meth:`ServiceError.trailing_metadata` carries the
details as ``grpc-status-details-bin`` (what ``grpc_status.rpc_status``
reads on the client side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from cowsim.sim import BudgetExceeded, InvalidInput, escape_control

__all__ = ["DOMAIN", "MAX_MESSAGE_CHARS", "ServiceError", "invalid_input", "one_line"]

DOMAIN = "cowsim"
"""The ErrorInfo domain of every error the service raises."""
MAX_MESSAGE_CHARS = 1000
"""The longest message sent (a hostile input cannot make an error huge)."""


def one_line(text: str) -> str:
    """``text`` on one line, control characters escaped, at most MAX_MESSAGE_CHARS."""
    line = escape_control(" ".join(str(text).split()))
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


@dataclass
class ServiceError(Exception):
    """A refusal: status code, one-line message and the details that say why."""

    code: grpc.StatusCode
    message: str
    field_violations: Sequence[tuple[str, str]] = ()
    """(field path, description) pairs: a google.rpc.BadRequest."""
    quota_violations: Sequence[tuple[str, str]] = ()
    """(limit, description) pairs: a google.rpc.QuotaFailure."""
    reason: str = ""
    """The ErrorInfo reason (``INVALID_SPEC``, ``LIMIT_EXCEEDED`` …), if any."""
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.message = one_line(self.message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def status(self) -> status_pb2.Status:
        """The google.rpc.Status with the details."""
        details: list[any_pb2.Any] = []
        if self.field_violations:
            bad = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=one_line(name),
                                                            description=one_line(text))
                for name, text in self.field_violations])
            details.append(_pack(bad))
        if self.quota_violations:
            quota = error_details_pb2.QuotaFailure(violations=[
                error_details_pb2.QuotaFailure.Violation(subject=subject,
                                                         description=one_line(text))
                for subject, text in self.quota_violations])
            details.append(_pack(quota))
        if self.reason:
            details.append(_pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN,
                                                             metadata=self.metadata)))
        return status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message,
                                 details=details)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The metadata that carries :meth:`status` to the client."""
        return (("grpc-status-details-bin", self.status().SerializeToString()),)


def _pack(message: error_details_pb2.BadRequest | error_details_pb2.QuotaFailure
          | error_details_pb2.ErrorInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def invalid_input(error: InvalidInput, request_field: str) -> ServiceError:
    """The library's error as a status: BudgetExceeded → RESOURCE_EXHAUSTED, any other
    InvalidInput → INVALID_ARGUMENT with a field violation.  ``request_field`` is the
    request field the input came in, for an error about the document as a whole."""
    path = error.field or request_field
    if isinstance(error, BudgetExceeded):
        return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"run too big for this server: {error}",
                            quota_violations=[("budget", f"{path}: {error.message}")],
                            field_violations=[(path, error.message)],
                            reason="BUDGET_EXCEEDED")
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error),
                        field_violations=[(path, error.message)], reason="INVALID_INPUT")
