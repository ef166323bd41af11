"""Batch rewriting at scale: parallel speed-up and the memory of one rewrite.

- speed: 16 legacy .h5 files of ~20 MB rewritten (int8 per channel, float32 storage) with
  ``--workers 1`` and ``--workers 2``, interleaved, best of `repeat`; goal: 2 workers at least
  1.6x faster on a 2-core machine.
- memory: the peak resident memory of a process rewriting one ~1 GB legacy .h5 (what each
  worker does) with each recipe of RECIPES, against 1.5x its largest tensor + 200 MB; the
  resident memory of a process that only imports wqkernels is printed beside it.

Files are generated into a temporary directory.  Run: ``python -m pytest
benchmarks/test_bench_batch.py -s`` (prints the figures) or run this file.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import wqkernels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_bench_files import make_legacy_h5  # noqa: E402 -- Dense models of side x side kernels

MB = 1_000_000
MiB = 1 << 20
#: the ~1 GB files: (Dense layers, kernel side); 16 MiB kernels, or 256 MiB ones
BIG_MODELS = [(64, 2048), (4, 8192)]
#: the recipes whose memory is measured: int8, global pruning with int4, packed storage
RECIPES = [("--bits", "8"), ("--sparsity", "0.5", "--bits", "4"), ("--bits", "8", "--storage", "packed")]


def speed(directory: str, files: int = 16, repeat: int = 2, layers: int = 5) -> dict:
    """Seconds of the batch with 1 and 2 workers (best of `repeat`, interleaved) and the ratio,
    over `files` files of `layers` Dense(1024) layers each (5: ~21 MB, 24: ~101 MB)."""
    src = os.path.join(directory, "models")
    os.makedirs(src)
    for i in range(files):
        make_legacy_h5(os.path.join(src, f"m{i:02d}.h5"), layers=layers, side=1024, seed=i)
    size = sum(os.path.getsize(os.path.join(src, n)) for n in os.listdir(src))
    recipe = wqkernels.Recipe(bits=8, granularity="channel")
    times, loads = {1: [], 2: []}, []
    for r in range(repeat):
        for workers in (1, 2):
            out = os.path.join(directory, f"out-{workers}-{r}")
            loads.append(os.getloadavg()[0])  # wall time counts other processes' turns too
            start = time.perf_counter()
            wqkernels.rewrite_many([src], out, recipe, workers=workers, progress=False)
            times[workers].append(time.perf_counter() - start)
    best = {w: min(t) for w, t in times.items()}
    return {"files": files, "mb": size / MB, "workers_1": best[1], "workers_2": best[2],
            "speedup": best[1] / best[2], "cores": wqkernels.batch.available_cores(),
            "runs": {w: t for w, t in times.items()}, "loads": loads}


#: run the command line (or only the imports) and print the process's peak resident memory;
#: VmHWM starts afresh at exec (ru_maxrss would count the parent's pages at fork)
PEAK_RSS = """
import sys
if sys.argv[1:]:
    from wqkernels.cli import main
    code = main(sys.argv[1:])
else:
    import h5py, wqkernels
    code = 0
status = open("/proc/self/status").read().splitlines()
print("VmHWM", next(line.split()[1] for line in status if line.startswith("VmHWM:")))
sys.exit(code)
"""


def peak_rss(args: list[str]) -> int:
    """Peak resident bytes of a process running ``wqkernels args`` (Linux: /proc)."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wqkernels {' '.join(map(str, args))} failed: {proc.stderr}")
    return int(proc.stdout.splitlines()[-1].split()[1]) * 1024  # kB


def memory(directory: str, recipes: list = RECIPES) -> list[dict]:
    """Peak resident memory of `wqkernels rewrite` with each recipe on each 1 GB model, and of
    the bare imports."""
    baseline = peak_rss([])
    rows = []
    for layers, side in BIG_MODELS:
        src = os.path.join(directory, "big.h5")
        make_legacy_h5(src, layers=layers, side=side)
        largest, name = side * side * 4, f"{layers} x {side}x{side} kernels"
        dst = os.path.join(directory, "big-out.h5")
        for options in recipes:
            start = time.perf_counter()
            rss = peak_rss(["rewrite", src, "-o", dst, *options])
            rows.append({"model": name, "file_mb": os.path.getsize(src) / MB, "largest_mib": largest / MiB,
                         "peak_mib": rss / MiB, "imports_mib": baseline / MiB,
                         "goal_mib": (1.5 * largest + 200 * MiB) / MiB, "seconds": time.perf_counter() - start,
                         "options": " ".join(options)})
            os.unlink(dst)
        os.unlink(src)
    return rows


def _print_speed(r: dict) -> None:
    runs = "; ".join(f"--workers {w}: " + ", ".join(f"{t:.2f}" for t in ts) for w, ts in r["runs"].items())
    print(f"\n{r['files']} files, {r['mb']:.0f} MB, int8 per channel, {r['cores']} cores: "
          f"--workers 1 {r['workers_1']:.2f} s, --workers 2 {r['workers_2']:.2f} s, "
          f"speed-up {r['speedup']:.2f}x (goal >= 1.6); runs {runs} s; 1-minute load before each run "
          + ", ".join(f"{v:.2f}" for v in r["loads"]))


def _print_memory(rows: list[dict]) -> None:
    for r in rows:
        print(f"\nrewrite {r['options']} of a {r['file_mb']:.0f} MB legacy .h5 ({r['model']}): peak RSS "
              f"{r['peak_mib']:.0f} MiB (imports alone {r['imports_mib']:.0f} MiB); goal 1.5 x "
              f"{r['largest_mib']:.0f} MiB + 200 MiB = {r['goal_mib']:.0f} MiB; {r['seconds']:.1f} s")


def test_batch_speedup_two_workers(tmp_path):
    _print_speed(speed(str(tmp_path)))


def test_rewrite_memory_1gb(tmp_path):
    _print_memory(memory(str(tmp_path)))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        _print_memory(memory(tmp))
    for layers in (5, 24):
        with tempfile.TemporaryDirectory() as tmp:
            _print_speed(speed(tmp, layers=layers))
