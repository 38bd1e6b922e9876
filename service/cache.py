"""The result cache key: a run is a pure function of (spec, kernel, seed, cowsim version).

The library promises byte-identical results for the same validated spec, kernel
and seed (docs/architecture.md, "The run contract"), so a finished run's result
answers every later submission with the same four inputs.  The key hashes the
*validated* spec, not its text: YAML or JSON, comments, key order, ``"4MiB"``
or ``4194304`` — the same model is the same run::

    key = cache_key(plan.spec, plan.kernel, plan.seed, __version__)

(The bounded ``workload`` label a run's metrics carry is ``WorkloadSpec.workload_label``.)
"""

from __future__ import annotations

import hashlib
import json

from cowsim.sim import WorkloadSpec

__all__ = ["cache_key", "canonical_spec"]


def canonical_spec(spec: WorkloadSpec) -> str:
    """The validated spec as canonical JSON (sorted keys, no spaces, units resolved)."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, default=str)


def cache_key(spec: WorkloadSpec, kernel: str, seed: int, version: str) -> str:
    """sha256 (hex) of the canonical spec, the resolved kernel name, the seed and the
    cowsim version."""
    payload = json.dumps({"spec": canonical_spec(spec), "kernel": kernel, "seed": seed,
                          "version": version}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


