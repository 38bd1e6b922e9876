"""Scenario scripts: deterministic step lists run on any kernel generation.

``load_scenario`` validates a file (YAML or JSON), ``run_scenario`` runs it on
one :class:`~cowsim.sim.kernel.Generation` and returns a
:class:`ScenarioResult` with the design's JSON keys.
"""

from cowsim.sim.scenario.loader import ScenarioError, load_scenario, parse_scenario
from cowsim.sim.scenario.runner import ScenarioResult, run_scenario
from cowsim.sim.scenario.schema import Scenario

__all__ = [
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
]
