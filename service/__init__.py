"""cowsim.service — gRPC server, run store, executors and Prometheus exporter.

Not built yet: the service issue follows the kernel-model and workload issues
(see docs/design.md "Service"). It will depend on :mod:`cowsim.sim` only.
"""
