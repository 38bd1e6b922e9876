"""Bearer-token authentication: with a token file, every RPC but health needs the token.

The server reads one token from ``--token-file`` (surrounding whitespace
stripped; an empty file is refused).  Each call must carry the metadata
``authorization: Bearer <token>``; the comparison is :func:`hmac.compare_digest`
(constant time, so the answer's timing does not reveal a prefix).  A call
without it, or with another token, ends UNAUTHENTICATED before the handler
runs.  ``grpc.health.v1.Health`` stays open, so load balancers and Kubernetes
probes need no secret; reflection is *not* open (it describes the API).

The interceptor answers with a handler of the same shape as the real one (a
stream for a streaming method), because grpc.aio checks the shape.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

__all__ = ["OPEN_METHOD_PREFIXES", "TokenAuthInterceptor", "deny_handler", "read_token"]

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
MESSAGE = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"


def read_token(path: Path) -> str:
    """The token in ``path``; ValueError when it cannot be read or is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read token file {path}: {exc}") from None
    if not token or any(char.isspace() for char in token):
        raise ValueError(f"token file {path}: one token without spaces is expected")
    return token


def _authorized(metadata: Any, token: bytes) -> bool:
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, given = text.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return True
    return False


def deny_handler(handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
                 ) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler shaped like ``handler`` that only aborts with ``code`` and ``message``."""

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield None  # pragma: no cover - abort raises

    options: dict[str, Any] = {"request_deserializer": handler.request_deserializer,
                               "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **options)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **options)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **options)
    return grpc.stream_stream_rpc_method_handler(stream, **options)


class TokenAuthInterceptor(aio.ServerInterceptor):
    """Refuses calls without the bearer token (health excepted)."""

    def __init__(self, token: str, open_prefixes: tuple[str, ...] = OPEN_METHOD_PREFIXES) -> None:
        self.token = token.encode()
        self.open_prefixes = open_prefixes

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(self.open_prefixes):
            return handler
        if _authorized(handler_call_details.invocation_metadata, self.token):
            return handler
        return deny_handler(handler, grpc.StatusCode.UNAUTHENTICATED, MESSAGE)
