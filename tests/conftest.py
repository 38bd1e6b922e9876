"""Hypothesis profiles for the test session, and the switch for the long sweeps.

Profiles every test starts from (a test's own ``settings(...)`` wins over them), chosen
by the environment:

* ``dev`` (the default): hypothesis' defaults.
* ``ci`` (when ``CI`` is set, as ``.ci/run`` runs): no deadline and no too-slow health check
  (on a loaded 2-core runner a slow example is load, not a bug), and a failure prints the
  ``@reproduce_failure`` blob that replays it locally.

``pytest --hypothesis-profile=NAME`` overrides the choice.

The default tier's property tests (``test_models_agree``, ``test_invariants_hold``) run
``PROPERTY_EXAMPLES`` examples per kernel generation, or ``CI_PROPERTY_EXAMPLES`` under
``CI``, where the slow tier's sweeps run more and longer sequences of the same properties.

The ``-m slow`` property sweeps (``test_models_agree_long``, ``test_invariants_hold_long``)
take their example count from the ``sweep`` profile: ``SWEEP_EXAMPLES`` per kernel
generation, sized so that ``.ci/run`` stays within its budget, or the full 2,000 with
``COWSIM_LONG_TESTS=1``; ``COWSIM_SWEEP_EXAMPLES=N`` sets the count directly.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Examples per kernel generation of a default-tier property test, locally and under CI.
PROPERTY_EXAMPLES = 120
CI_PROPERTY_EXAMPLES = 50
#: Examples per kernel generation in a ``-m slow`` sweep unless COWSIM_LONG_TESTS is set.
SWEEP_EXAMPLES = 150
#: The long sweeps' count (COWSIM_LONG_TESTS=1).
LONG_SWEEP_EXAMPLES = 2000

LONG_TESTS = os.environ.get("COWSIM_LONG_TESTS", "") not in ("", "0")

settings.register_profile("dev")
settings.register_profile("ci", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
settings.load_profile("ci" if CI else "dev")

settings.register_profile("property",
                          max_examples=CI_PROPERTY_EXAMPLES if CI else PROPERTY_EXAMPLES)

settings.register_profile(
    "sweep",
    max_examples=int(os.environ.get("COWSIM_SWEEP_EXAMPLES")
                     or (LONG_SWEEP_EXAMPLES if LONG_TESTS else SWEEP_EXAMPLES)),
)
