"""Scenario scripts: deterministic step lists run on any kernel generation.

``load_scenario`` validates a file (YAML or JSON), ``run_scenario`` runs it on
one :class:`~cowsim.sim.kernel.Generation` and returns a
:class:`ScenarioResult` with the design's JSON keys; ``trace_scenario`` records
per step what a real kernel would show (validate-host's predictions).
"""

from cowsim.sim.scenario.loader import ScenarioError, load_scenario, parse_scenario
from cowsim.sim.scenario.runner import ScenarioResult, run_scenario
from cowsim.sim.scenario.schema import Scenario
from cowsim.sim.scenario.trace import PAGE_OUTCOMES, PageState, page_outcome, trace_scenario

__all__ = [
    "PAGE_OUTCOMES",
    "PageState",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "load_scenario",
    "page_outcome",
    "parse_scenario",
    "run_scenario",
    "trace_scenario",
]
