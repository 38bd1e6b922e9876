"""A Python client for ``cowsim serve``: the cowsim.v1 API behind plain methods.

    from cowsim.clients.service_client import Client

    with Client("localhost:50051", token="s3cret") as client:
        run = client.submit(open("spec.yaml").read(), source_name="spec.yaml", seed=7)
        for event in client.watch(run.run_id):       # progress, then the final run
            ...
        result = json.loads(client.get(run.run_id).result.result_json)
        sweep = client.submit_sweep(open("sweep.yaml").read(), source_name="sweep.yaml").sweep
        final = client.wait_sweep(sweep.sweep_id)          # then get_sweep(...).runs_csv

It is synchronous (a :class:`grpc.Channel` and the generated
``CowsimServiceStub``); for asyncio, use
``cowsim.v1.cowsim_pb2_grpc.CowsimServiceStub`` over a ``grpc.aio`` channel.
Messages are the generated ones (``cowsim.v1.cowsim_pb2``).

Every failed call raises :class:`ServiceCallError`: the status ``code``, the
one-line ``message``, and the google.rpc details decoded —
``field_violations`` (field path, description) from a BadRequest and
``quota_violations`` (limit, description) from a QuotaFailure.  ``token`` adds
``authorization: Bearer …`` to every call; ``root_certificates`` (PEM bytes)
switches to TLS, ``tls=True`` to TLS with the system's roots.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cowsim.v1 import cowsim_pb2 as pb
from cowsim.v1 import cowsim_pb2_grpc

__all__ = ["Client", "ServiceCallError"]

T = TypeVar("T")


class ServiceCallError(Exception):
    """A call the server refused or could not answer."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 field_violations: list[tuple[str, str]] | None = None,
                 quota_violations: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field_violations = field_violations or []
        self.quota_violations = quota_violations or []

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ServiceCallError:
        call: Any = error
        code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
        message = call.details() if hasattr(call, "details") else str(error)
        fields: list[tuple[str, str]] = []
        quotas: list[tuple[str, str]] = []
        try:
            status = rpc_status.from_call(call)
        except ValueError:
            status = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.extend((v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                quotas.extend((v.subject, v.description) for v in quota.violations)
        return cls(code, message or code.name, fields, quotas)


class Client:
    """A synchronous client of one server."""

    def __init__(self, target: str, *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, server_name: str | None = None,
                 timeout_seconds: float | None = 60.0,
                 max_message_bytes: int = 64 << 20) -> None:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", max_message_bytes)]
        if server_name is not None:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = cowsim_pb2_grpc.CowsimServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self.timeout_seconds = timeout_seconds

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout_seconds: float | None = None) -> Any:
        try:
            return method(request, metadata=self.metadata,
                          timeout=timeout_seconds if timeout_seconds is not None
                          else self.timeout_seconds)
        except grpc.RpcError as error:
            raise ServiceCallError.from_rpc_error(error) from None

    def submit_run(self, spec: str, *, source_name: str = "", kernel: str = "",
                   seed: int | None = None, request_id: str = "",
                   spec_format: pb.SpecFormat.ValueType = pb.SPEC_FORMAT_UNSPECIFIED,
                   pace: float | None = None) -> pb.SubmitRunResponse:
        """Submit a workload spec's text (``pace``: hold it to that many simulated seconds
        per wall-clock second); the response says whether it was cached."""
        request = pb.SubmitRunRequest(spec=spec, source_name=source_name, kernel=kernel,
                                      request_id=request_id, spec_format=spec_format)
        if seed is not None:
            request.seed = seed
        if pace is not None:
            request.pace = pace
        response: pb.SubmitRunResponse = self._call(self.stub.SubmitRun, request)
        return response

    def submit(self, spec: str, **options: Any) -> pb.Run:
        """Submit a workload spec's text; the run (see :meth:`submit_run`)."""
        return self.submit_run(spec, **options).run

    def get(self, run_id: str, *, full: bool = True) -> pb.Run:
        view = pb.RUN_VIEW_FULL if full else pb.RUN_VIEW_BASIC
        response: pb.GetRunResponse = self._call(self.stub.GetRun,
                                                 pb.GetRunRequest(run_id=run_id, view=view))
        return response.run

    def list_page(self, *, page_size: int = 0, page_token: str = "",
                  state: pb.RunState.ValueType = pb.RUN_STATE_UNSPECIFIED, kernel: str = "",
                  name: str = "") -> pb.ListRunsResponse:
        request = pb.ListRunsRequest(page_size=page_size, page_token=page_token, state=state,
                                     kernel=kernel, name=name)
        response: pb.ListRunsResponse = self._call(self.stub.ListRuns, request)
        return response

    def list_runs(self, **filters: Any) -> Iterator[pb.Run]:
        """Every run matching the filters (state, kernel, name), newest first, page by page."""
        token = ""
        while True:
            page = self.list_page(page_token=token, **filters)
            yield from page.runs
            token = page.next_page_token
            if not token:
                return

    def watch(self, run_id: str, timeout_seconds: float | None = None
              ) -> Iterator[pb.WatchRunResponse]:
        """Progress messages, then the final one (``.run``); no timeout unless given."""
        try:
            yield from self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id),
                                          metadata=self.metadata, timeout=timeout_seconds)
        except grpc.RpcError as error:
            raise ServiceCallError.from_rpc_error(error) from None

    def wait(self, run_id: str, timeout_seconds: float | None = None) -> pb.Run:
        """The run once it is final (watching its progress until then)."""
        for message in self.watch(run_id, timeout_seconds):
            if message.HasField("run"):
                return message.run
        return self.get(run_id)

    def cancel(self, run_id: str) -> pb.Run:
        response: pb.CancelRunResponse = self._call(self.stub.CancelRun,
                                                    pb.CancelRunRequest(run_id=run_id))
        return response.run

    def run_scenario(self, scenario: str, *, file_name: str = "", kernel: str = "",
                     timeout_seconds: float | None = None) -> pb.RunScenarioResponse:
        request = pb.RunScenarioRequest(scenario=scenario, file_name=file_name, kernel=kernel)
        response: pb.RunScenarioResponse = self._call(self.stub.RunScenario, request,
                                                      timeout_seconds)
        return response

    def list_kernels(self) -> list[pb.Kernel]:
        response: pb.ListKernelsResponse = self._call(self.stub.ListKernels,
                                                      pb.ListKernelsRequest())
        return list(response.kernels)

    def get_schema(self, kind: pb.SchemaKind.ValueType = pb.SCHEMA_KIND_WORKLOAD_SPEC) -> str:
        response: pb.GetSchemaResponse = self._call(self.stub.GetSchema,
                                                    pb.GetSchemaRequest(kind=kind))
        return response.json_schema

    # -- sweeps --------------------------------------------------------------------------

    def submit_sweep(self, sweep: str, *, source_name: str = "", request_id: str = "",
                     sweep_format: pb.SpecFormat.ValueType = pb.SPEC_FORMAT_UNSPECIFIED
                     ) -> pb.SubmitSweepResponse:
        """Submit a sweep spec's text (its ``base`` inline); every run is queued or cached."""
        request = pb.SubmitSweepRequest(sweep=sweep, source_name=source_name,
                                        request_id=request_id, sweep_format=sweep_format)
        response: pb.SubmitSweepResponse = self._call(self.stub.SubmitSweep, request)
        return response

    def get_sweep(self, sweep_id: str, *, full: bool = True) -> pb.Sweep:
        """A sweep; ``full``: with its text, sweep.json and (once final) its tables."""
        view = pb.SWEEP_VIEW_FULL if full else pb.SWEEP_VIEW_BASIC
        response: pb.GetSweepResponse = self._call(
            self.stub.GetSweep, pb.GetSweepRequest(sweep_id=sweep_id, view=view))
        return response.sweep

    def list_sweeps(self, *, page_size: int = 0) -> Iterator[pb.Sweep]:
        """Every sweep, newest first, page by page."""
        token = ""
        while True:
            page: pb.ListSweepsResponse = self._call(
                self.stub.ListSweeps, pb.ListSweepsRequest(page_size=page_size, page_token=token))
            yield from page.sweeps
            token = page.next_page_token
            if not token:
                return

    def watch_sweep(self, sweep_id: str, timeout_seconds: float | None = None
                    ) -> Iterator[pb.WatchSweepResponse]:
        """The counts as they change, then the final sweep (``.sweep``); no timeout unless
        given."""
        try:
            yield from self.stub.WatchSweep(pb.WatchSweepRequest(sweep_id=sweep_id),
                                            metadata=self.metadata, timeout=timeout_seconds)
        except grpc.RpcError as error:
            raise ServiceCallError.from_rpc_error(error) from None

    def wait_sweep(self, sweep_id: str, timeout_seconds: float | None = None) -> pb.Sweep:
        """The sweep once it is final, with its tables."""
        for _ in self.watch_sweep(sweep_id, timeout_seconds):
            pass
        return self.get_sweep(sweep_id)

    def cancel_sweep(self, sweep_id: str) -> pb.Sweep:
        response: pb.CancelSweepResponse = self._call(
            self.stub.CancelSweep, pb.CancelSweepRequest(sweep_id=sweep_id))
        return response.sweep
