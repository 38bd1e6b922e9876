"""The servicer: cowsim.v1.CowsimService's RPCs, from messages to the run manager and back.

Every handler follows one pattern: check the request's own fields (lengths,
enum values, ids — the network is hostile), call the
:class:`~cowsim.service.runs.RunManager`, render the answer
(:mod:`cowsim.service.convert`).  Any :class:`~cowsim.service.errors.ServiceError`
ends the call with its status and details; anything else is logged and answered
INTERNAL with one line — a client never sees a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from cowsim.service.convert import (
    STATE_NAMES,
    progress_message,
    run_message,
    sweep_message,
    sweep_progress_message,
)
from cowsim.service.errors import ServiceError
from cowsim.service.runs import RunManager
from cowsim.service.store import RunRecord
from cowsim.service.sweep_service import SweepManager, SweepView
from cowsim.sim import (
    KernelVersionError,
    Scenario,
    __version__,
    all_generations,
    generation_for,
    json_schema,
)
from cowsim.v1 import cowsim_pb2 as pb
from cowsim.v1 import cowsim_pb2_grpc

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "CowsimServicer"]

log = logging.getLogger("cowsim.service")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
RUN_ID = re.compile(r"[0-9a-f]{1,64}")
T = TypeVar("T")


def _invalid(field: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}",
                        field_violations=[(field, message)])


def _run_id(value: str) -> str:
    if not RUN_ID.fullmatch(value):
        raise _invalid("run_id", "a run id is 1-64 lowercase hex digits")
    return value


def _sweep_id(value: str) -> str:
    if not RUN_ID.fullmatch(value):
        raise _invalid("sweep_id", "a sweep id is 1-64 lowercase hex digits")
    return value


def _sweep_full(view: int) -> bool:
    if view == pb.SWEEP_VIEW_UNSPECIFIED:
        return True
    if view not in (pb.SWEEP_VIEW_BASIC, pb.SWEEP_VIEW_FULL):
        raise _invalid("view", f"unknown view {view}")
    return view == pb.SWEEP_VIEW_FULL


def _source_name(name: str, fmt: int, default: str) -> str:
    """The name the library parses the text under: its extension selects JSON."""
    if fmt not in (pb.SPEC_FORMAT_UNSPECIFIED, pb.SPEC_FORMAT_YAML, pb.SPEC_FORMAT_JSON):
        raise _invalid("spec_format", f"unknown format {fmt}")
    name = name or default
    if fmt == pb.SPEC_FORMAT_JSON and not name.endswith(".json"):
        name += ".json"
    elif fmt == pb.SPEC_FORMAT_YAML and name.endswith(".json"):
        name += ".yaml"
    return name


def _full(view: int, default: bool) -> bool:
    if view == pb.RUN_VIEW_UNSPECIFIED:
        return default
    if view not in (pb.RUN_VIEW_BASIC, pb.RUN_VIEW_FULL):
        raise _invalid("view", f"unknown view {view}")
    return view == pb.RUN_VIEW_FULL


def _page_token(filters: dict[str, Any], before_seq: int) -> str:
    text = json.dumps({"before": before_seq, "filters": filters}, sort_keys=True)
    return base64.urlsafe_b64encode(text.encode()).decode()


def _before_seq(token: str, filters: dict[str, Any]) -> int | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        before = data["before"]
        same = data["filters"] == json.loads(json.dumps(filters, sort_keys=True))
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        raise _invalid("page_token", "not a page token of this server") from None
    if not isinstance(before, int) or isinstance(before, bool):
        raise _invalid("page_token", "not a page token of this server")
    if not same:
        raise _invalid("page_token", "the filters differ from the request that made the token")
    return before


async def _abort(context: aio.ServicerContext[Any, Any], error: Exception, rpc: str) -> None:
    """End the call with the status ``error`` stands for: a ServiceError's own, else (a bug)
    INTERNAL, logged.  (``context.abort`` raises; an AbortError is the caller's to re-raise.)"""
    if isinstance(error, ServiceError):
        await context.abort(error.code, error.message, trailing_metadata=error.trailing_metadata())
    log.exception("%s failed", rpc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")


async def _answer(context: aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``; a ServiceError or a bug becomes the call's status."""
    try:
        return await call()
    except aio.AbortError:
        raise
    except Exception as error:
        await _abort(context, error, "RPC")
    raise AssertionError("abort returned")  # pragma: no cover


class CowsimServicer(cowsim_pb2_grpc.CowsimServiceServicer):
    """The CowsimService RPCs over one :class:`RunManager`."""

    def __init__(self, manager: RunManager, sweeps: SweepManager | None = None) -> None:
        self.manager = manager
        self.sweeps = sweeps if sweeps is not None else SweepManager(manager)

    async def SubmitRun(self, request: pb.SubmitRunRequest,
                        context: aio.ServicerContext[Any, Any]) -> pb.SubmitRunResponse:
        async def call() -> pb.SubmitRunResponse:
            source = _source_name(request.source_name, request.spec_format, "<spec>")
            seed = request.seed if request.HasField("seed") else None
            pace = request.pace if request.HasField("pace") else None
            outcome = await self.manager.submit(request.spec, source, request.kernel or None, seed,
                                                request.request_id or None, pace)
            return pb.SubmitRunResponse(run=run_message(outcome.run, full=outcome.cached),
                                        cached=outcome.cached, replayed=outcome.replayed)
        return await _answer(context, call)

    async def GetRun(self, request: pb.GetRunRequest,
                     context: aio.ServicerContext[Any, Any]) -> pb.GetRunResponse:
        async def call() -> pb.GetRunResponse:
            record = self.manager.get(_run_id(request.run_id))
            return pb.GetRunResponse(run=run_message(record, full=_full(request.view, True)))
        return await _answer(context, call)

    async def ListRuns(self, request: pb.ListRunsRequest,
                       context: aio.ServicerContext[Any, Any]) -> pb.ListRunsResponse:
        async def call() -> pb.ListRunsResponse:
            if request.page_size < 0:
                raise _invalid("page_size", "must not be negative")
            size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            state = None
            if request.state != pb.RUN_STATE_UNSPECIFIED:
                if request.state not in STATE_NAMES:
                    raise _invalid("state", f"unknown state {request.state}")
                state = STATE_NAMES[request.state]
            kernel = None
            if request.kernel:
                try:
                    kernel = generation_for(request.kernel[:64]).label
                except KernelVersionError as exc:
                    raise _invalid("kernel", exc.message) from None
            name = request.name[:200] or None
            full = _full(request.view, False)
            filters = {"state": state, "kernel": kernel, "name": name}
            before = _before_seq(request.page_token, filters)
            records = self.manager.store.list_runs(state=state, kernel=kernel, name=name,
                                                   before_seq=before, limit=size + 1)
            more = len(records) > size
            records = records[:size]
            token = _page_token(filters, records[-1].seq) if more and records else ""
            return pb.ListRunsResponse(runs=[run_message(self._live(r), full) for r in records],
                                       next_page_token=token)
        return await _answer(context, call)

    def _live(self, record: RunRecord) -> RunRecord:
        live = self.manager.live.get(record.run_id)
        if live is not None and record.state == "RUNNING":
            record.sim_seconds, record.events_processed = live.sim_seconds, live.events_processed
        return record

    async def WatchRun(self, request: pb.WatchRunRequest,
                       context: aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.WatchRunResponse]:
        try:
            run_id = _run_id(request.run_id)
            async for item in self.manager.watch(run_id):
                if isinstance(item, RunRecord):
                    yield pb.WatchRunResponse(run=run_message(item, full=True))
                else:
                    yield pb.WatchRunResponse(progress=progress_message(item))
        except aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, "WatchRun")

    async def CancelRun(self, request: pb.CancelRunRequest,
                        context: aio.ServicerContext[Any, Any]) -> pb.CancelRunResponse:
        async def call() -> pb.CancelRunResponse:
            record = await self.manager.cancel(_run_id(request.run_id))
            return pb.CancelRunResponse(run=run_message(record, full=True))
        return await _answer(context, call)

    async def RunScenario(self, request: pb.RunScenarioRequest,
                          context: aio.ServicerContext[Any, Any]) -> pb.RunScenarioResponse:
        async def call() -> pb.RunScenarioResponse:
            file = _source_name(request.file_name, request.spec_format, "<scenario>")
            outcome = await self.manager.run_scenario(request.scenario, file, request.kernel)
            results = []
            for item in outcome.results:
                message = pb.ScenarioResult(
                    scenario=str(item["scenario"]), file=str(item["file"]),
                    kernel=str(item["kernel"]), era=str(item["era"]), ok=bool(item["ok"]),
                    expectations_failed=sum(1 for e in item["expectations"] if not e["ok"]),
                    violations=len(item["violations"]), result_json=json.dumps(item, indent=2))
                message.counters.update({str(k): int(v) for k, v in item["counters"].items()})
                results.append(message)
            payload = outcome.results[0] if len(outcome.results) == 1 else outcome.results
            return pb.RunScenarioResponse(results=results, ok=all(r.ok for r in results),
                                          result_json=json.dumps(payload, indent=2))
        return await _answer(context, call)

    async def ListKernels(self, request: pb.ListKernelsRequest,
                          context: aio.ServicerContext[Any, Any]) -> pb.ListKernelsResponse:
        async def call() -> pb.ListKernelsResponse:
            kernels = []
            for generation in all_generations():
                kernel = pb.Kernel(name=generation.label, era=generation.era,
                                   version=".".join(map(str, generation.version)))
                kernel.rules.update({str(k): str(v) for k, v in generation.rules().items()})
                kernels.append(kernel)
            return pb.ListKernelsResponse(kernels=kernels)
        return await _answer(context, call)

    async def GetSchema(self, request: pb.GetSchemaRequest,
                        context: aio.ServicerContext[Any, Any]) -> pb.GetSchemaResponse:
        async def call() -> pb.GetSchemaResponse:
            if request.kind == pb.SCHEMA_KIND_SCENARIO:
                schema = Scenario.model_json_schema()
            elif request.kind in (pb.SCHEMA_KIND_UNSPECIFIED, pb.SCHEMA_KIND_WORKLOAD_SPEC):
                schema = json_schema()
            else:
                raise _invalid("kind", f"unknown schema kind {request.kind}")
            return pb.GetSchemaResponse(json_schema=json.dumps(schema, indent=2),
                                        cowsim_version=__version__)
        return await _answer(context, call)

    # -- sweeps --------------------------------------------------------------------------

    def _sweep(self, view: SweepView, full: bool) -> pb.Sweep:
        return sweep_message(view, full)

    async def SubmitSweep(self, request: pb.SubmitSweepRequest,
                          context: aio.ServicerContext[Any, Any]) -> pb.SubmitSweepResponse:
        async def call() -> pb.SubmitSweepResponse:
            source = _source_name(request.source_name, request.sweep_format, "<sweep>")
            record, replayed = await self.sweeps.submit(request.sweep, source,
                                                        request.request_id or None)
            return pb.SubmitSweepResponse(sweep=self._sweep(self.sweeps.view(record), False),
                                          replayed=replayed)
        return await _answer(context, call)

    async def GetSweep(self, request: pb.GetSweepRequest,
                       context: aio.ServicerContext[Any, Any]) -> pb.GetSweepResponse:
        async def call() -> pb.GetSweepResponse:
            full = _sweep_full(request.view)
            record = self.sweeps.get(_sweep_id(request.sweep_id))
            view = await self.sweeps.full_view(record) if full else self.sweeps.view(record)
            return pb.GetSweepResponse(sweep=self._sweep(view, full))
        return await _answer(context, call)

    async def ListSweeps(self, request: pb.ListSweepsRequest,
                         context: aio.ServicerContext[Any, Any]) -> pb.ListSweepsResponse:
        async def call() -> pb.ListSweepsResponse:
            if request.page_size < 0:
                raise _invalid("page_size", "must not be negative")
            size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            filters: dict[str, Any] = {"kind": "sweeps"}
            before = _before_seq(request.page_token, filters)
            views = self.sweeps.list_sweeps(before, size + 1)
            more = len(views) > size
            views = views[:size]
            token = _page_token(filters, views[-1].record.seq) if more and views else ""
            return pb.ListSweepsResponse(sweeps=[self._sweep(v, False) for v in views],
                                         next_page_token=token)
        return await _answer(context, call)

    async def WatchSweep(self, request: pb.WatchSweepRequest,
                         context: aio.ServicerContext[Any, Any]
                         ) -> AsyncIterator[pb.WatchSweepResponse]:
        try:
            sweep_id = _sweep_id(request.sweep_id)
            async for item in self.sweeps.watch(sweep_id):
                if isinstance(item, SweepView):
                    yield pb.WatchSweepResponse(sweep=self._sweep(item, False))
                else:
                    yield pb.WatchSweepResponse(progress=sweep_progress_message(sweep_id, item))
        except aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, "WatchSweep")

    async def CancelSweep(self, request: pb.CancelSweepRequest,
                          context: aio.ServicerContext[Any, Any]) -> pb.CancelSweepResponse:
        async def call() -> pb.CancelSweepResponse:
            view = await self.sweeps.cancel(_sweep_id(request.sweep_id))
            return pb.CancelSweepResponse(sweep=self._sweep(view, False))
        return await _answer(context, call)
