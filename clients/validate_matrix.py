"""The validation matrix: every scenario on every kernel validated, beside the model's verdict.

``cowsim validate-host --matrix [--kernel-image PATH ...] [--markdown]`` prints one row per
scenario and one column per kernel (this host, then each image).  A cell says what the
model predicts for the scenario on that kernel's release (``pass``: every expectation of the
scenario holds; ``FAIL``: the era has the bug) and how the real kernel compared, step by step:

* ``pass ✓ 7/7`` — every step ran and agreed with the model;
* ``FAIL ✓ 5/8, from step 5: no swap`` — the steps that ran agreed; the scenario stopped at a
  step this kernel cannot run (the reason, shortened);
* ``pass ✗ 2 of 8 disagree (steps 5, 6)`` — the kernel did something else: a stable backport,
  a distribution patch or a model bug (docs/validation.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from cowsim.sim import Scenario, generation_for, run_scenario

__all__ = ["Matrix", "build_matrix", "cell_text", "matrix_markdown", "matrix_table", "short_reason"]

_SHORT = (
    ("gup_test", "needs gup_test"),
    ("swap", "no swap"),
    ("soft-dirty", "no soft-dirty"),
    ("in flight", "O_DIRECT in flight"),
    ("O_DIRECT", "no O_DIRECT"),
    ("io_uring", "no io_uring"),
    ("userfaultfd", "no uffd-wp"),
    ("root", "no PFNs (root)"),
)


def short_reason(reason: str | None) -> str:
    """A skip reason in a few words, for a table cell."""
    text = reason or ""
    for needle, short in _SHORT:
        if needle in text:
            return short
    return text[:40]


@dataclass
class Matrix:
    """Scenario files (rows) × kernels (columns: ``release (era)``), and each cell's result."""

    files: list[str]
    kernels: list[str]
    cells: dict[tuple[str, str], dict[str, Any]]
    verdicts: dict[tuple[str, str], bool]


def build_matrix(loaded: list[tuple[Scenario, str]], columns: list[list[dict[str, Any]]]
                 ) -> Matrix:
    files = [file for _scenario, file in loaded]
    scenarios = {file: scenario for scenario, file in loaded}
    kernels: list[str] = []
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    verdicts: dict[tuple[str, str], bool] = {}
    for column in columns:
        for result in column:
            kernel = f"{result['kernel']} ({result['era']})"
            if kernel not in kernels:
                kernels.append(kernel)
            cells[(result["file"], kernel)] = result
            generation = generation_for(result["model"])
            verdicts[(result["file"], kernel)] = run_scenario(
                scenarios[result["file"]], generation, result["file"]).ok
    return Matrix(files, kernels, cells, verdicts)


def cell_text(result: dict[str, Any] | None, verdict: bool | None) -> str:
    if result is None or verdict is None:
        return "—"
    steps = result["steps"]
    agree = sum(s["status"] == "agree" for s in steps)
    disagree = [s["step"] for s in steps if s["status"] == "disagree"]
    word = "pass" if verdict else "FAIL"
    if disagree:
        return (f"{word} ✗ {len(disagree)} of {len(steps)} disagree "
                f"(steps {', '.join(map(str, disagree))})")
    skipped = [s for s in steps if s["status"] == "skipped"]
    if skipped:
        first = skipped[0]
        return f"{word} ✓ {agree}/{len(steps)}, from step {first['step']}: {short_reason(first['reason'])}"
    return f"{word} ✓ {agree}/{len(steps)}"


def _name(file: str) -> str:
    return file.rsplit("/", 1)[-1]


def matrix_table(matrix: Matrix) -> Table:
    table = Table(title="validate-host: model verdict, and the real kernel step by step")
    table.add_column("scenario")
    for kernel in matrix.kernels:
        table.add_column(kernel, overflow="fold")
    for file in matrix.files:
        table.add_row(_name(file), *(cell_text(matrix.cells.get((file, k)),
                                               matrix.verdicts.get((file, k)))
                                     for k in matrix.kernels))
    return table


def matrix_markdown(matrix: Matrix) -> str:
    head = "| scenario | " + " | ".join(matrix.kernels) + " |"
    rule = "| --- |" + " --- |" * len(matrix.kernels)
    rows = ["| " + " | ".join([f"`{_name(file)}`", *(
        cell_text(matrix.cells.get((file, k)), matrix.verdicts.get((file, k)))
        for k in matrix.kernels)]) + " |" for file in matrix.files]
    return "\n".join([head, rule, *rows])
