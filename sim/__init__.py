"""cowsim.sim — the simulation library (numpy + simpy only).

The heart is :mod:`cowsim.sim.kernel`, a vectorized model of Linux anonymous
memory under copy-on-write, with one rule set per kernel generation.
:mod:`cowsim.sim.scenario` drives it with deterministic scenario scripts.
This package never imports gRPC or Prometheus.
"""
