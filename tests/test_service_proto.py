"""The checked-in cowsim.v1 modules are what tools/gen_proto.py makes from the .proto.

Regenerates into a temporary directory and compares byte for byte: a .proto edited without
running ``python tools/gen_proto.py`` (or generated with other tool versions than the
pinned dev dependencies) fails here, naming the files that differ.
"""

from __future__ import annotations

from pathlib import Path

from cowsim.v1 import cowsim_pb2, cowsim_pb2_grpc
from tools import gen_proto


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    written = gen_proto.generate(tmp_path)
    assert written, "no .proto files found"
    differ = []
    for path in written:
        relative = path.relative_to(tmp_path)
        checked_in = gen_proto.PROTO_ROOT / relative
        if not checked_in.exists() or checked_in.read_bytes() != path.read_bytes():
            differ.append(str(relative))
    assert not differ, f"run `python tools/gen_proto.py` and commit: {differ} differ"


def test_generated_modules_import_as_cowsim_v1() -> None:
    service = cowsim_pb2.DESCRIPTOR.services_by_name["CowsimService"]
    assert {method.name for method in service.methods} == {
        "RunScenario", "SubmitRun", "GetRun", "ListRuns", "WatchRun", "CancelRun",
        "ListKernels", "GetSchema", "SubmitSweep", "GetSweep", "ListSweeps", "WatchSweep",
        "CancelSweep"}
    assert hasattr(cowsim_pb2_grpc, "CowsimServiceStub")
