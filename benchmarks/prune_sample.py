"""Sample size of magnitude pruning: CPU time of ``prune(x, sparsity, out=y)`` per sample size.

``prune`` by sparsity draws ``pruning.SAMPLE_SIZE`` keys to bound the threshold in a window,
then one pass writes y and copies out the window's keys.  A larger sample narrows the window
(fewer blocks of the pass hold a window key, so fewer take the slow branch) but costs random
reads; this sweep shows where the two meet.  The output is written into an existing array, so
the figures leave out the page faults of a fresh one, and each is set against ``np.copyto``
into the same array.  Every sample size gives the same result (the selection is exact); the
sweep checks that too.  Times are ``time.process_time`` per call, best and median of rounds,
one OpenMP thread unless ``OMP_NUM_THREADS`` says otherwise.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/prune_sample.py [--size 16777216] [--sparsity 0.7]
        [--samples 16384,32768,65536,131072,262144] [--rounds 5]
"""

import argparse
import time

import numpy as np

from wqkernels import pruning


def per_call(f, calls: int, rounds: int) -> list:
    f()
    out = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(calls):
            f()
        out.append((time.process_time() - t0) / calls * 1e3)
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1 << 24)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--samples", default="16384,32768,65536,131072,262144")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10)
    a = ap.parse_args()
    x = np.random.default_rng(0).standard_normal(a.size, dtype=np.float32)
    y = np.empty_like(x)
    floor = per_call(lambda: np.copyto(y, x), a.calls, a.rounds)
    print(f"np.copyto        best {floor[0]:8.3f} ms  median {floor[len(floor) // 2]:8.3f} ms")
    default, reference = pruning.SAMPLE_SIZE, None
    try:
        for s in (int(v) for v in a.samples.split(",")):
            pruning.SAMPLE_SIZE = s
            t = per_call(lambda: pruning.prune(x, a.sparsity, out=y), a.calls, a.rounds)
            if reference is None:
                reference = y.copy()
            elif not np.array_equal(y.view(np.uint32), reference.view(np.uint32)):
                raise SystemExit(f"sample size {s} changed the result")
            mark = "  (default)" if s == default else ""
            print(f"sample {s:>9}  best {t[0]:8.3f} ms  median {t[len(t) // 2]:8.3f} ms"
                  f"  {t[0] / floor[0]:5.2f}x copyto{mark}")
    finally:
        pruning.SAMPLE_SIZE = default


if __name__ == "__main__":
    main()
