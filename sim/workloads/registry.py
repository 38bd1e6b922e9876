"""Workloads by kind: each workload module registers the simpy process that runs its spec.

A workload spec names its ``kind`` (``forking_server``, ``direct_io`` …).  Its
module registers a *starter* under that kind::

    @register("checkpointer")
    def run(sim: Simulation, proc: str, spec: Checkpointer) -> Generator[Any, Any, None]:
        ...

and :func:`cowsim.sim.driver.build` starts every workload of every process by
looking its kind up here, so adding a workload touches no engine code: a spec
model in :mod:`cowsim.sim.spec` and a module in this package.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

from cowsim.sim.engine import Simulation

__all__ = ["Starter", "kinds", "register", "starter"]

Starter = Callable[[Simulation, str, Any], Generator[Any, Any, None]]
"""``starter(sim, process_name, workload_spec)``: the simpy process of one workload."""

_STARTERS: dict[str, Starter] = {}
_S = TypeVar("_S", bound=Starter)


def register(kind: str) -> Callable[[_S], _S]:
    """Register the starter of workload ``kind`` (a decorator)."""

    def decorate(function: _S) -> _S:
        if kind in _STARTERS:
            raise ValueError(f"workload kind {kind!r} is registered twice")
        _STARTERS[kind] = function
        return function

    return decorate


def starter(kind: str) -> Starter:
    """The starter registered for ``kind``."""
    try:
        return _STARTERS[kind]
    except KeyError:
        raise KeyError(f"no workload of kind {kind!r} is registered; known: "
                       f"{', '.join(sorted(_STARTERS))}") from None


def kinds() -> list[str]:
    """The registered workload kinds."""
    return sorted(_STARTERS)
