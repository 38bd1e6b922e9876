"""Run mypy over the whole project under the import names setuptools gives it.

    python tools/typecheck.py [mypy options] [paths]

The package's folders are not named after its import names: ``[tool.setuptools.package-dir]``
in pyproject.toml maps ``cowsim.sim`` to ``sim/``, ``cowsim.service`` to ``service/`` and
``cowsim.clients`` to ``clients/``.  Plain ``mypy sim`` would call ``sim/kernel/mm.py``
``sim.kernel.mm``, and it cannot follow ``import cowsim.sim`` into the editable install
either: setuptools serves that mapping through an import hook (pypa/setuptools#3518).  This
entry gives mypy the mapping itself: it lets mypy find the files and read its configuration
(``[tool.mypy]`` in pyproject.toml) as usual, then names every file under a mapped folder by
its import name (``BuildSource(path, module)``), so errors point at the real files and
nothing needs building, linking or reinstalling.

With no path arguments it checks ``TARGETS`` (the mapped folders, tests, bench and tools);
any other arguments are passed to mypy.  The exit status is mypy's: 0 clean, 1 errors, 2 a
blocking error.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from mypy.build import build
from mypy.errors import CompileError
from mypy.fscache import FileSystemCache
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent

#: Checked as well as the mapped package folders (their module names come from their paths).
EXTRA_TARGETS = ("tests", "bench", "tools")


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    """setuptools' package-dir mapping from pyproject.toml, folder → import name."""
    with (root / "pyproject.toml").open("rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {folder.strip("/"): package for package, folder in mapping.items()}


def module_name(path: str, folders: dict[str, str], root: Path = ROOT) -> str | None:
    """The import name of the file at ``path`` if it lies in a mapped folder, else None."""
    relative = Path(os.path.abspath(path)).relative_to(root)
    for folder, package in folders.items():
        if relative.parts[: len(Path(folder).parts)] == Path(folder).parts:
            rest = list(relative.with_suffix("").parts[len(Path(folder).parts):])
            if rest and rest[-1] == "__init__":
                rest.pop()
            return ".".join([package, *rest])
    return None


def main(argv: list[str]) -> int:
    os.chdir(ROOT)
    folders = package_dirs()
    has_paths = any(os.path.exists(arg) for arg in argv)
    targets = [] if has_paths else [*folders, *EXTRA_TARGETS]
    fscache = FileSystemCache()
    found, options = process_options([*argv, *targets], fscache=fscache)
    sources = []
    for source in found:
        module = module_name(source.path, folders) if source.path else None
        sources.append(BuildSource(source.path, module or source.module, source.text,
                                   base_dir=str(ROOT) if module else source.base_dir))
    try:
        messages = build(sources, options, fscache=fscache).errors
        blocking = False
    except CompileError as error:
        messages, blocking = error.messages, True
    for line in messages:
        print(line)
    errors = [line for line in messages if ": error:" in line]
    if blocking:
        return 2
    if errors:
        files = {line.split(":", 1)[0] for line in errors}
        print(f"Found {len(errors)} error{'s' * (len(errors) != 1)} in {len(files)} "
              f"file{'s' * (len(files) != 1)} (checked {len(sources)} source files)")
        return 1
    print(f"Success: no issues found in {len(sources)} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
