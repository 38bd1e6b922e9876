"""The observing interceptor: every RPC's method, status code and wall time.

:class:`ObservingInterceptor` wraps each handler so that, when a call ends,
``observer.rpc_handled(method, code, seconds)`` is told how it ended — the
hook for ``grpc_server_handled_total{grpc_method,grpc_code}`` and
``grpc_server_handling_seconds``.  It is the outermost interceptor, so calls
the token check refuses count too (as UNAUTHENTICATED).  For a streaming
method the time runs until the stream ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from cowsim.service.observer import Observer

__all__ = ["ObservingInterceptor", "code_name"]


def code_name(context: aio.ServicerContext[Any, Any]) -> str:
    """The status code a finished call's context holds ("OK" when none was set)."""
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for member in grpc.StatusCode:
        if member.value[0] == code:
            return member.name
    return "UNKNOWN"


class ObservingInterceptor(aio.ServerInterceptor):
    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method or ""
        observer = self.observer

        def report(context: aio.ServicerContext[Any, Any], started: float, error: str | None
                   ) -> None:
            code = code_name(context)
            if error is not None and code == "OK":
                code = error
            observer.rpc_handled(method, code, time.perf_counter() - started)

        options: dict[str, Any] = {"request_deserializer": handler.request_deserializer,
                                   "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                started, error = time.perf_counter(), None
                try:
                    return await inner(request, context)
                except asyncio.CancelledError:
                    error = "CANCELLED"
                    raise
                except aio.AbortError:
                    raise
                except Exception:
                    error = "UNKNOWN"
                    raise
                finally:
                    report(context, started, error)

            return grpc.unary_unary_rpc_method_handler(unary, **options)
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: aio.ServicerContext[Any, Any]
                             ) -> AsyncIterator[Any]:
                started, error = time.perf_counter(), None
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except asyncio.CancelledError:
                    error = "CANCELLED"
                    raise
                except aio.AbortError:
                    raise
                except Exception:
                    error = "UNKNOWN"
                    raise
                finally:
                    report(context, started, error)

            return grpc.unary_stream_rpc_method_handler(stream, **options)
        return handler  # client-streaming methods (reflection): not timed
