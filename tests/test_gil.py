"""The kernels release the GIL: a Python thread keeps counting while one runs on a large array.

A second thread counts in a pure-Python loop and gives the GIL away every few counts (a
``time.sleep(0)``).  During the measurement the switch interval is made longer than any call
here, so this thread never takes the GIL from the main thread by force: it counts only when the
main thread releases the GIL.  Its solo rate is measured first (the main thread asleep), then
the counts made *inside* calls of a kernel on a large array, repeated for `WINDOW` seconds.  A
call that holds the GIL leaves that count at zero, whatever the load of the machine; a kernel
that releases it leaves the counter most of its solo rate, less what the kernel's own threads
take of the cores.  The control tests run the same check on calls known to hold the GIL and
require it to fail, so the check is known to be able to.

A loaded machine can starve the counter during one measurement, so a kernel gets `ATTEMPTS`
measurements to reach `MIN_SHARE`; a call holding the GIL fails every one of them.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import wqkernels

#: elements of the large array: 64 MiB of float32, milliseconds per kernel call
SIZE = 16 << 20
#: seconds of calls measured, and of the counter alone
WINDOW = 0.2
BASELINE = 0.05
#: the switch interval while measuring: longer than all the calls of a measurement together,
#: so that only a release lets the counter run
SWITCH_INTERVAL = 5.0
#: counts between two releases of the GIL by the counter
BURST = 64
#: a kernel must leave the counter at least this share of its solo rate
MIN_SHARE = 0.1
ATTEMPTS = 3


class Counter(threading.Thread):
    """Counts as fast as a Python loop can, giving the GIL away every BURST counts, until
    `running` is cleared."""

    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.running = True

    def run(self):
        while self.running:
            for _ in range(BURST):
                self.count += 1
            time.sleep(0)  # releases the GIL: the main thread takes it back at once


def counter_share(call) -> float:
    """The counter's rate inside calls of `call` (in this thread), over its rate alone."""
    saved = sys.getswitchinterval()
    counter = Counter()
    sys.setswitchinterval(SWITCH_INTERVAL)
    counter.start()
    try:
        start, before = time.perf_counter(), counter.count
        time.sleep(BASELINE)
        alone = (counter.count - before) / (time.perf_counter() - start)
        counts = seconds = 0.0
        while seconds < WINDOW:
            start, before = time.perf_counter(), counter.count
            call()
            counts += counter.count - before
            seconds += time.perf_counter() - start
    finally:
        counter.running = False
        counter.join()
        sys.setswitchinterval(saved)
    return counts / seconds / alone


def shares(call) -> list[float]:
    """Counter shares of up to ATTEMPTS measurements, stopping at the first reaching MIN_SHARE."""
    call()  # once before measuring: first-touch costs, thread pools
    out = []
    while len(out) < ATTEMPTS and (not out or out[-1] < MIN_SHARE):
        out.append(round(counter_share(call), 3))
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    x = rng.standard_normal(SIZE, dtype=np.float32)
    y = x + rng.standard_normal(SIZE, dtype=np.float32) * np.float32(0.01)
    qa = wqkernels.quantize(x.reshape(-1, 4096), 4, axis=0)
    codes = qa.values.reshape(-1)
    quarter = x[: SIZE // 4]  # for the calls that do more work per element
    return {"x": x, "y": y, "qa": qa, "codes": codes, "packed": wqkernels.pack_bits(codes, 4),
            "rows": x.reshape(-1, 4096), "quarter": quarter.reshape(-1, 4096),
            "halves": {"a": quarter[: SIZE // 8], "b": quarter[SIZE // 8:]}}


#: calls that spend their time in our kernels (method="percentile" and prune_model are left
#: out: most of their time goes to NumPy's partition and sort, which release the GIL
#: themselves, so the check could not see a kernel of theirs holding it)
KERNELS = {
    "quantize": lambda d: wqkernels.quantize(d["rows"], 4, axis=0),
    "quantize-mse-asymmetric": lambda d: wqkernels.quantize(d["quarter"], 4, axis=0, method="mse",
                                                            symmetric=False),
    "quantize-block": lambda d: wqkernels.quantize(d["rows"], 4, axis=1, block_size=32),
    "quantize-sum": lambda d: wqkernels.quantize(d["rows"], 4, axis=0, symmetric=False, rounding="sum"),
    "fake_quantize": lambda d: wqkernels.fake_quantize(d["rows"], 4, axis=0),
    "dequantize": lambda d: wqkernels.dequantize(d["qa"]),
    "pack_bits": lambda d: wqkernels.pack_bits(d["codes"], 4),
    "unpack_bits": lambda d: wqkernels.unpack_bits(d["packed"], 4, SIZE),
    "prune": lambda d: wqkernels.prune(d["x"], 0.5),
    "prune-threshold": lambda d: wqkernels.prune(d["x"], threshold=0.3),
    "prune_n_m": lambda d: wqkernels.prune_n_m(d["rows"], 2, 4, axis=0),
    "prune_channels": lambda d: wqkernels.prune_channels(d["rows"], 0.5),
    "prune_global": lambda d: wqkernels.prune_global(d["halves"], 0.5),
    "clip": lambda d: wqkernels.clip(d["x"], -1.0, 1.0),
    "shrink": lambda d: wqkernels.shrink(d["x"], 0.1),
    "sparsity": lambda d: wqkernels.sparsity(d["x"]),
    "error": lambda d: wqkernels.error(d["x"], d["y"]),
    "bits_for_sqnr": lambda d: wqkernels.bits_for_sqnr(d["quarter"], 20.0, axis=0),
}


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_releases_the_gil(name, data):
    call = KERNELS[name]
    got = shares(lambda: call(data))
    assert got[-1] >= MIN_SHARE, (f"{name}: a Python thread counted at {got} of its solo rate while "
                                  f"the kernel ran (at least {MIN_SHARE} expected): the GIL is held")


#: calls known to hold the GIL throughout, for as long as a kernel call: a C loop of the
#: interpreter (builtin sum over a range) and a NumPy loop over Python objects
HOLDING_THE_GIL = {
    "builtin-sum": lambda objects: sum(range(400_000)),
    "numpy-object-loop": lambda objects: objects * 3,
}


@pytest.mark.parametrize("name", list(HOLDING_THE_GIL))
def test_the_check_fails_for_a_call_that_holds_the_gil(name):
    call, objects = HOLDING_THE_GIL[name], np.arange(200_000, dtype=object)
    got = shares(lambda: call(objects))
    assert len(got) == ATTEMPTS and max(got) < MIN_SHARE, got
