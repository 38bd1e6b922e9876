"""The modeled machine: CPUs, TLBs, shootdowns and the cost model."""
