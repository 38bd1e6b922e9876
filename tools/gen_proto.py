"""Generate the Python modules of the gRPC API from proto/cowsim/v1/*.proto.

    python tools/gen_proto.py [--out DIR]

The one command that makes ``cowsim.v1``: protoc (grpcio-tools) writes, next to each
``.proto`` under ``proto/``,

* ``NAME_pb2.py`` (messages) and ``NAME_pb2_grpc.py`` (the stub and servicer), and
* ``NAME_pb2.pyi`` and ``NAME_pb2_grpc.pyi``, typed stubs from mypy-protobuf's plugins
  (``protoc-gen-mypy``, ``protoc-gen-mypy_grpc``), so mypy checks the service and
  client code against the real message fields.

The generated files are checked in (``pip install`` needs no protoc); with ``--out DIR``
they are written there instead, which is how ``tests/test_service_proto.py`` regenerates
them into a temporary directory and fails when they differ from the checked-in ones.
Both tools are dev dependencies (``pip install -e '.[dev]'``); the versions pinned there
are the ones whose output is checked in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
#: The generated files, per .proto file stem.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Every .proto file of the API, relative to ``root`` (protoc's import root)."""
    return sorted(path.relative_to(root) for path in root.rglob("*.proto"))


def plugin(name: str) -> Path:
    """The protoc plugin executable installed beside this Python (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"gen_proto: {name} not found beside {sys.executable}; "
                         "pip install -e '.[dev]' installs mypy-protobuf")
    return path


def generate(out: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc over every .proto under ``root`` into ``out``; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    files = proto_files(root)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(file) for file in files),
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"gen_proto: protoc failed with status {status}")
    return [out / file.parent / f"{file.stem}{suffix}" for file in files
            for suffix in GENERATED_SUFFIXES]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Generate cowsim.v1 from proto/.")
    parser.add_argument("--out", type=Path, default=PROTO_ROOT,
                        help="where to write (default: next to the .proto files)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
