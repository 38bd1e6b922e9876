"""Scale benchmark: fork a written 16 GiB private mapping, then COW-write 1 M random pages.

Machines here are noisy, so every time is reported as a ratio against a numpy
baseline measured in the same run:

* fork time ÷ time of numpy copying the same page-table arrays (target ≤ 10);
* COW-write time ÷ time of a numpy fancy-indexed update of as many elements
  (target ≤ 50);
* bytes of model state (frames, page tables, swap, batches) per page of the
  mapping (target ≤ 32).

Run:  python bench/bench_fork_cow.py [--pages 4194304] [--writes 1000000] [--kernel 6.8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from cowsim.sim.kernel import Kernel


def best_of(rounds: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=4_194_304, help="pages in the mapping")
    parser.add_argument("--writes", type=int, default=1_000_000, help="random parent writes")
    parser.add_argument("--rounds", type=int, default=3, help="fork+write rounds (best kept)")
    parser.add_argument("--kernel", default="6.8")
    args = parser.parse_args()

    rng = np.random.default_rng(2021)
    kernel = Kernel(args.kernel)
    kernel.frames.reserve(args.pages + args.writes)
    start = time.perf_counter()
    kernel.mmap("parent", "heap", args.pages)
    kernel.write("parent", "heap", None, 0x5A)
    populate_s = time.perf_counter() - start
    _owner, vma = kernel.vma("parent", "heap")

    # Baselines, measured now on this machine.
    copy_s = best_of(5, lambda: (vma.pfn.copy(), vma.pte.copy()))
    target = np.zeros(args.pages, dtype=np.uint32)
    picks = rng.choice(args.pages, size=args.writes, replace=False)

    def fancy_update() -> None:
        target[picks] = 7

    fancy_s = best_of(5, fancy_update)

    fork_times, write_times = [], []
    for round_index in range(args.rounds):
        child = f"child{round_index}"
        start = time.perf_counter()
        kernel.fork("parent", child)
        fork_times.append(time.perf_counter() - start)
        pages = np.sort(rng.choice(args.pages, size=args.writes, replace=False))
        copies_before = kernel.counters["cow_copies"]
        start = time.perf_counter()
        kernel.write("parent", "heap", pages, 0x100 + round_index)
        write_times.append(time.perf_counter() - start)
        assert kernel.counters["cow_copies"] - copies_before == args.writes
        if round_index == 0:
            state_bytes = kernel.model_nbytes()  # parent and child mapped, 1 M pages copied
        kernel.exit(child)

    fork_s, write_s = fork_times[0], min(write_times)
    per_page = state_bytes / args.pages
    print(f"kernel {kernel.gen.label} (era {kernel.gen.era}); mapping {args.pages:,} pages "
          f"({args.pages * 4096 / 2**30:.1f} GiB); {args.writes:,} COW writes; "
          f"best of {args.rounds} rounds")
    print(f"populate (write every page):     {populate_s * 1e3:9.1f} ms")
    print(f"baseline numpy page-table copy:  {copy_s * 1e3:9.2f} ms")
    print(f"baseline numpy fancy update:     {fancy_s * 1e3:9.2f} ms")
    print(f"fork of the freshly written map: {fork_times[0] * 1e3:9.1f} ms")
    print(f"re-fork after COW writes:        {statistics.median(fork_times[1:] or fork_times) * 1e3:9.1f} ms"
          "  (frames scattered by the COW copies)")
    print(f"COW writes:                      {write_s * 1e3:9.1f} ms "
          f"(median {statistics.median(write_times) * 1e3:.1f})")
    print(f"fork / page-table copy       = {fork_s / copy_s:6.2f}   (target <= 10)")
    print(f"re-fork / page-table copy    = {statistics.median(fork_times[1:] or fork_times) / copy_s:6.2f}")
    print(f"COW writes / fancy update    = {write_s / fancy_s:6.2f}   (target <= 50)")
    print(f"model bytes per mapped page  = {per_page:6.2f}   (target <= 32; "
          f"{state_bytes / 2**20:.0f} MiB with parent + child mapped)")


if __name__ == "__main__":
    main()
