"""Loading scenario files: YAML or JSON → a validated :class:`Scenario`, or one clear error.

Every way a file can be wrong (unreadable, not YAML, not a mapping, an unknown
op, a missing or mistyped field, a size the model cannot hold) ends in a
:class:`ScenarioError` — an :class:`~cowsim.sim.errors.InvalidInput` whose
path starts ``steps[i]`` — rendered as one line naming the file, the step
index, the op and the field::

    s.yaml: step 3 (write): field 'pages': page index 5 is out of range …

Reading and parsing are :mod:`cowsim.sim.inputs`, shared with workload specs;
a scenario too big for this machine is refused here, before anything runs
(:mod:`cowsim.sim.scenario.capacity`).  Nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cowsim.sim.errors import BudgetExceeded, InvalidInput, PathPart
from cowsim.sim.inputs import input_path, invalid_from_pydantic, parse_document, read_text
from cowsim.sim.scenario.capacity import check_capacity
from cowsim.sim.scenario.schema import OPS, Scenario

__all__ = ["ScenarioError", "load_scenario", "parse_scenario"]


class ScenarioError(InvalidInput):
    """Invalid scenario input: names the file, the step (if any) and the field.

    Built as before, ``ScenarioError(file, message, step=3, op="write", field="pages")``,
    or with the whole path: ``ScenarioError(file, message, path=("steps", 3, "pages"),
    op="write")``.
    """

    def __init__(self, file: str | None = None, message: str = "", step: int | None = None,
                 op: str | None = None, field: str | None = None, *,
                 path: Sequence[PathPart] = (), source: str | None = None) -> None:
        if not path:
            rest: tuple[PathPart, ...] = tuple(field.split(".")) if field else ()
            path = ("steps", step, *rest) if step is not None else rest
        super().__init__(message, path=path, source=source if source is not None else file, op=op)

    @property
    def file(self) -> str | None:
        return self.source

    @property
    def reason(self) -> str:
        return self.message


def as_scenario_error(error: InvalidInput) -> InvalidInput:
    """``error`` as a ScenarioError (a BudgetExceeded stays what it is)."""
    if isinstance(error, ScenarioError | BudgetExceeded):
        return error
    return ScenarioError(error.source, error.message, path=error.path, op=error.op)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file."""
    try:
        text = read_text(path)
    except InvalidInput as exc:
        raise as_scenario_error(exc) from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, name: str = "<scenario>") -> Scenario:
    """Validate scenario text (YAML, or JSON when ``name`` ends in ``.json``), and refuse it
    if it cannot fit this machine's budget."""
    try:
        data = parse_document(text, name)
    except InvalidInput as exc:
        raise as_scenario_error(exc) from None
    if not isinstance(data, dict):
        raise ScenarioError(name, "a scenario is a mapping with 'name' and 'steps'")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _explain(name, data, exc) from None
    except (RecursionError, OverflowError, TypeError) as exc:
        raise ScenarioError(name, f"cannot validate: {type(exc).__name__}") from None
    check_capacity(scenario, name)
    return scenario


def _explain(name: str, data: dict[str, Any], exc: ValidationError) -> InvalidInput:
    """The first validation error, as file / step / op / field."""
    error = exc.errors(include_url=False)[0]
    general = invalid_from_pydantic(exc, data, source=name)
    loc = list(error["loc"])
    if len(loc) < 2 or loc[0] != "steps" or not isinstance(loc[1], int):
        return ScenarioError(name, general.message, path=general.path)
    index = loc[1]
    steps = data.get("steps")
    raw = steps[index] if isinstance(steps, list) and 0 <= index < len(steps) else None
    op = raw.get("op") if isinstance(raw, dict) and isinstance(raw.get("op"), str) else None
    if error["type"] in ("union_tag_invalid", "union_tag_not_found") or (
            op is not None and op not in OPS):
        if isinstance(raw, dict) and "op" in raw:
            shown = repr(op if op is not None else raw["op"])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            message = f"unknown op {shown}; ops are: {', '.join(OPS)}"
        else:
            message = "every step needs an 'op'"
        return ScenarioError(name, message, op=op, path=("steps", index, "op"))
    path = input_path(loc, data, keep_last=error["type"] == "missing")
    message = general.message
    if error["type"] == "extra_forbidden":
        message = f"unknown field for op {op}"
    elif error["type"] in ("model_type", "model_attributes_type") and len(path) == 2:
        message = "a step is a mapping such as {op: write, proc: p, region: r, value: 1}"
    return ScenarioError(name, message, op=op, path=path)
