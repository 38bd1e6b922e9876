"""Loading scenario files: YAML or JSON → a validated :class:`Scenario`, or one clear error.

Every way a file can be wrong (unreadable, not YAML, not a mapping, an unknown
op, a missing or mistyped field, a size the model cannot hold) ends in a
:class:`ScenarioError` whose message is one line naming the file, the step
index and the field.  Nothing else escapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cowsim.sim.scenario.capacity import check_capacity
from cowsim.sim.scenario.schema import OPS, Scenario


class ScenarioError(ValueError):
    """Invalid scenario input: names the file, the step (if any) and the field."""

    def __init__(self, file: str, message: str, step: int | None = None, op: str | None = None,
                 field: str | None = None) -> None:
        self.file, self.step, self.op, self.field, self.reason = file, step, op, field, message
        where = [file]
        if step is not None:
            where.append(f"step {step}" + (f" ({op})" if op else ""))
        if field:
            where.append(f"field {field!r}")
        super().__init__(": ".join([*where, _one_line(message)]))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(name, f"cannot read file: {exc}") from None
    return parse_scenario(text, name)


def parse_scenario(text: str, name: str = "<scenario>") -> Scenario:
    """Validate scenario text (YAML; JSON is YAML too)."""
    try:
        data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ScenarioError(name, f"not valid {'JSON' if name.endswith('.json') else 'YAML'}: "
                                  f"{_one_line(str(exc))[:200]}") from None
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


def _explain(name: str, data: dict[str, Any], exc: ValidationError) -> ScenarioError:
    """The first validation error, as file / step / field."""
    error = exc.errors(include_url=False)[0]
    loc = list(error["loc"])
    message = error["msg"]
    if not loc or loc[0] != "steps" or len(loc) < 2 or not isinstance(loc[1], int):
        field = ".".join(str(part) for part in loc) or None
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        return ScenarioError(name, message, field=field)
    index = loc[1]
    steps = data.get("steps")
    raw = steps[index] if isinstance(steps, list) and index < len(steps) else None
    op = raw.get("op") if isinstance(raw, dict) and isinstance(raw.get("op"), str) else None
    rest = loc[2:]
    if error["type"] in ("union_tag_invalid", "union_tag_not_found") or (
        op is not None and op not in OPS
    ):
        return ScenarioError(name, f"unknown op {op!r}; ops are: {', '.join(OPS)}"
                             if op is not None else "every step needs an 'op'",
                             step=index, op=op, field="op")
    if rest and rest[0] == op:
        rest = rest[1:]
    field = ".".join(str(part) for part in rest) or None
    if error["type"] == "extra_forbidden":
        message = f"unknown field for op {op}"
    elif error["type"] == "missing":
        message = "required"
    elif error["type"] == "model_type" and not rest:
        message = "a step is a mapping such as {op: write, proc: p, region: r, value: 1}"
    return ScenarioError(name, message.removeprefix("Value error, "), step=index, op=op,
                         field=field)
