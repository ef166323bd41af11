"""Batch rewriting: planning, parallel runs, failures, interruption and resume, dask, progress."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import pytest

import wqkernels
from wqkernels import BatchError, Recipe, batch
from wqkernels.cli import main
from wqkernels.progress import progress_bar

from .helpers import assert_bit_equal, run_cli

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import make_keras2_files as k2  # noqa: E402
from test_bench_files import make_legacy_h5  # noqa: E402 -- the files benchmark's Dense models

RECIPE = Recipe(bits=4)


def _datasets(path) -> dict:
    """Every dataset of an HDF5 file by name."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_datasets(a, b) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db), f"{a} and {b} hold different datasets"
    for name in da:
        assert_bit_equal(da[name], db[name], f"{a}:{name}")


def _models(directory, count: int = 3, layers: int = 0, side: int = 0) -> list:
    """`count` Keras 2.0 full-model files (16 kB), or Dense models of `layers` x side^2 floats."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = directory / f"m{i:02d}.h5"
        if layers:
            make_legacy_h5(p, layers, side, seed=i)
        else:
            k2.write_keras20_full(p, seed=i)
        paths.append(p)
    return paths


def _single(src, tmp_path, recipe=RECIPE):
    """The single-file rewrite of src, for comparison."""
    dst = tmp_path / "single" / src.name
    dst.parent.mkdir(exist_ok=True)
    wqkernels.rewrite(src, dst, recipe)
    return dst


def _files(directory) -> set:
    """Every file under directory, relative, hidden ones included."""
    return {os.path.relpath(os.path.join(r, n), directory) for r, _, ns in os.walk(directory) for n in ns}


# ---- planning ----------------------------------------------------------------------------------

def test_plan_destinations(tmp_path):
    runs = tmp_path / "runs"
    _models(runs, 2)
    _models(runs / "deep", 1)
    (runs / "notes.txt").write_text("not a model")
    (runs / ".m00.h5.abcd1234.tmp").write_bytes(b"")           # a rewrite's temporary file
    (runs / ".wqkernels-x1.weights.h5").write_bytes(b"")       # an extracted .keras member
    single = tmp_path / "single.weights"                         # any name when named directly
    k2.write_tfkeras_weights(single)
    out = runs / "out"                                           # inside a source: never scanned
    _models(out, 1)

    def dests(srcs, **kw):
        return [(os.path.relpath(j.source, tmp_path), os.path.relpath(j.destination, out))
                for j in batch.plan(srcs, out, **kw)]

    assert dests([runs, single]) == [("runs/m00.h5", "m00.h5"), ("runs/m01.h5", "m01.h5"),
                                     ("single.weights", "single.weights")]
    assert dests([runs], recursive=True) == [("runs/m00.h5", "m00.h5"), ("runs/m01.h5", "m01.h5"),
                                             ("runs/deep/m00.h5", "deep/m00.h5")]
    # glob matches: supported files only, each landing by its name; out/ is not an input
    assert dests([str(runs / "*.*")]) == [("runs/m00.h5", "m00.h5"), ("runs/m01.h5", "m01.h5")]
    assert dests([str(runs / "**" / "deep")]) == [("runs/deep/m00.h5", "m00.h5")]
    assert dests([str(runs / "m0[1]*")]) == [("runs/m01.h5", "m01.h5")]
    # the same file reached twice is planned once
    assert dests([runs, runs / "m00.h5"]) == [("runs/m00.h5", "m00.h5"), ("runs/m01.h5", "m01.h5")]
    job = batch.plan([runs / "m00.h5"], out)[0]
    assert job.size == os.path.getsize(runs / "m00.h5")


def test_plan_glob_collision_reported_before_work(tmp_path):
    runs = tmp_path / "runs"
    _models(runs, 1)
    _models(runs / "deep", 1)
    out = tmp_path / "out"
    with pytest.raises(BatchError) as info:
        batch.plan([str(runs / "**" / "*.h5")], out)
    assert "m00.h5" in str(info.value) and "2 files" in str(info.value)


@pytest.mark.parametrize("case", ["collision", "into-source", "missing", "no-match", "empty", "out-is-file"])
def test_plan_problems(case, tmp_path, capsys):
    a, b = _models(tmp_path / "a", 1), _models(tmp_path / "b", 1)
    (tmp_path / "empty").mkdir()
    srcs, out = {"collision": ([a[0], b[0]], tmp_path / "out"),
                 "into-source": ([tmp_path / "a"], tmp_path / "a"),
                 "missing": ([a[0], tmp_path / "nothing.h5"], tmp_path / "out"),
                 "no-match": ([str(tmp_path / "*.keras")], tmp_path / "out"),
                 "empty": ([tmp_path / "empty"], tmp_path / "out"),
                 "out-is-file": ([a[0]], b[0])}[case]
    before = _files(tmp_path)
    with pytest.raises(BatchError):
        wqkernels.rewrite_many(srcs, out, RECIPE)
    code, stdout, err = run_cli(["rewrite", *srcs, "--out-dir", out, "--bits", "4"], capsys)
    assert code == 2 and "Traceback" not in err and err.startswith("wqkernels rewrite: error:")
    assert _files(tmp_path) == before  # nothing written, not even the output directory


def test_plan_lists_every_collision(tmp_path):
    a, b = _models(tmp_path / "a", 2), _models(tmp_path / "b", 2)
    with pytest.raises(BatchError) as info:
        batch.plan([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and "2 problem(s)" in lines[0]
    for line, first, second in zip(lines[1:], a, b):
        assert "would be written from 2 files" in line and str(first) in line and str(second) in line


# ---- running -----------------------------------------------------------------------------------

def test_rewrite_many_equals_single_rewrites(tmp_path, keras3_zip):  # noqa: F811
    runs = tmp_path / "runs"
    sources = _models(runs, 3) + [keras3_zip]
    out = tmp_path / "out"
    result = wqkernels.rewrite_many([runs, keras3_zip], out, RECIPE, workers=2, progress=False)
    assert [r.source for r in result] == [str(s) for s in sources]
    assert [o.status for o in result.outcomes] == ["ok"] * 4 and not result.interrupted
    for src in sources:
        single = _single(src, tmp_path)
        if src.suffix == ".keras":
            assert (out / src.name).read_bytes() != b"" and wqkernels.load_weights(out / src.name).keys() \
                == wqkernels.load_weights(single).keys()
            for k, v in wqkernels.load_weights(single).items():
                assert_bit_equal(wqkernels.load_weights(out / src.name)[k], v, k)
        else:
            assert_same_datasets(out / src.name, single)
    assert _files(out) == {"m00.h5", "m01.h5", "m02.h5", "m.keras"}  # no temporary or lock file left


def test_thread_pool_executor(tmp_path):
    sources = _models(tmp_path / "runs", 3)
    with ThreadPoolExecutor(2) as pool:
        result = wqkernels.rewrite_many(sources, tmp_path / "out", RECIPE, executor=pool, progress=False)
    assert len(result) == 3
    for src in sources:
        assert_same_datasets(tmp_path / "out" / src.name, _single(src, tmp_path))
    with pytest.raises(ValueError, match="not both"):
        wqkernels.rewrite_many(sources, tmp_path / "out", RECIPE, executor=pool, workers=2)


@pytest.mark.parametrize("kwargs,error", [({"workers": 0}, ValueError), ({"workers": 1.5}, TypeError),
                                          ({"executor": "pool"}, TypeError), ({"recipe": "int8"}, TypeError)])
def test_rewrite_many_refuses(kwargs, error, tmp_path):
    sources = _models(tmp_path / "runs", 1)
    kwargs = {"recipe": RECIPE, **kwargs}
    with pytest.raises(error):
        wqkernels.rewrite_many(sources, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_bad_file_does_not_stop_the_batch(tmp_path, capsys):
    runs = tmp_path / "runs"
    good = _models(runs, 3)
    bad = runs / "m01b.h5"
    bad.write_bytes(good[0].read_bytes()[:3000])  # truncated
    out = tmp_path / "out"
    with pytest.raises(BatchError) as info:
        wqkernels.rewrite_many([runs], out, RECIPE, workers=2, progress=False)
    result = info.value.result
    assert [o.status for o in result.outcomes] == ["ok", "ok", "failed", "ok"]
    assert "m01b.h5" in str(info.value) and len(result) == 3
    assert _files(out) == {p.name for p in good}

    report = tmp_path / "report.json"
    code, stdout, err = run_cli(["rewrite", runs, "--out-dir", out, "--bits", "4", "--report", report], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"wqkernels rewrite: error: {result.failed[0].error}"]
    assert str(bad) in err and "3 ok, 1 failed, 0 skipped of 4" in stdout
    doc = json.loads(report.read_text())
    assert doc["totals"]["ok"] == 3 and doc["totals"]["failed"] == 1
    assert [f["status"] for f in doc["files"]] == ["ok", "ok", "failed", "ok"]
    ok = doc["files"][0]
    assert ok["source"] == str(good[0]) and ok["report"]["totals"]["weights_rewritten"] == 3
    assert ok["report"]["recipe"]["bits"] == 4 and doc["files"][2]["report"] is None


def test_destination_directory_that_cannot_be_made(tmp_path):
    runs = tmp_path / "runs"
    _models(runs, 1)
    _models(runs / "deep", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "deep").write_bytes(b"a file where a directory should be")
    with pytest.raises(BatchError) as info:
        wqkernels.rewrite_many([runs], out, RECIPE, recursive=True, workers=1, progress=False)
    assert [o.status for o in info.value.result.outcomes] == ["ok", "failed"]
    assert "cannot create its directory" in info.value.result.failed[0].error


def test_skip_existing_and_leftovers_of_a_hard_kill(tmp_path, capsys):
    sources = _models(tmp_path / "runs", 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m00.h5").write_bytes(b"an earlier output")
    leftovers = [".m01.h5.a1b2c3d4.tmp", ".wqkernels-k9_x0z1.weights.h5"]
    for name in leftovers:
        (out / name).write_bytes(b"partial")
    (out / ".unrelated.h5.a1b2c3d4.tmp").write_bytes(b"not ours")
    code, stdout, err = run_cli(["rewrite", *sources, "--out-dir", out, "--bits", "4", "--skip-existing"], capsys)
    assert code == 0, err
    assert "2 ok, 0 failed, 1 skipped of 3" in stdout and "removed 2 temporary file(s)" in stdout
    assert (out / "m00.h5").read_bytes() == b"an earlier output"
    assert _files(out) == {"m00.h5", "m01.h5", "m02.h5", ".unrelated.h5.a1b2c3d4.tmp"}


def test_second_batch_into_the_same_directory_is_refused(tmp_path):
    sources = _models(tmp_path / "runs", 1)
    out = tmp_path / "out"
    with batch.outputs.output_lock(str(out.mkdir() or out)) as locked:
        if not locked:
            pytest.skip("no file locks here")
        with pytest.raises(BatchError, match="another batch"):
            wqkernels.rewrite_many(sources, out, RECIPE, workers=1, progress=False)
    assert _files(out) == set()


def test_killed_worker_is_retried_alone(tmp_path):
    """SIGKILL one pool worker mid-batch: its file is redone alone, the batch completes, and the
    temporary file the killed worker left is removed."""
    sources = _models(tmp_path / "runs", 8, layers=3, side=256)
    out = tmp_path / "out"
    results = []
    runner = threading.Thread(target=lambda: results.append(
        wqkernels.rewrite_many(sources, out, Recipe(bits=3, method="mse"), workers=2, progress=False)))
    runner.start()
    deadline = time.monotonic() + 60
    while not any(n.endswith(".tmp") for n in _files(out) if out.exists()) and time.monotonic() < deadline:
        time.sleep(0.005)
    victims = [p for p in multiprocessing.active_children()]
    assert victims, "no pool worker found"
    os.kill(victims[0].pid, signal.SIGKILL)
    runner.join(120)
    assert results, "the batch did not finish"
    result = results[0]
    assert [o.status for o in result.outcomes] == ["ok"] * 8
    for src in sources:
        assert_same_datasets(out / src.name, _single(src, tmp_path, Recipe(bits=3, method="mse")))
    assert _files(out) == {s.name for s in sources}


def test_interrupted_pool_leaves_no_thread_running(tmp_path):
    """The pool's manager thread has ended when an interrupt leaves run_pool: left running, it
    closed its wake-up pipe while the interpreter's exit hook wrote to it (an OSError traceback
    after "interrupted", now and then)."""
    from wqkernels.batch.plan import plan
    from wqkernels.batch.pool import run_pool

    _models(tmp_path / "runs", 4)
    jobs = plan([tmp_path / "runs"], tmp_path / "out")

    def done(job, outcome):
        raise KeyboardInterrupt

    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        run_pool(jobs, RECIPE, 2, done)
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


# ---- interruption (a real process and signals) ----------------------------------------------

def _cli(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "wqkernels", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT to the process group (Ctrl-C)", "SIGTERM to the parent"])
def test_interrupt_then_resume_equals_a_clean_run(how, tmp_path):
    sources = _models(tmp_path / "runs", 12, layers=3, side=256)  # 0.8 MB each
    options = ["--bits", "3", "--method", "mse"]
    out = tmp_path / "out"
    proc = _cli("rewrite", tmp_path / "runs", "--out-dir", out, *options, "--workers", "1", start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(n.endswith(".h5") and not n.startswith(".") for n in (_files(out) if out.exists() else ())):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    if how.startswith("SIGINT"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    done = _files(out)
    what = f"stdout:\n{stdout}\nstderr:\n{stderr}\nfiles: {sorted(done)}"
    assert proc.returncode == (130 if how.startswith("SIGINT") else 143), what
    assert "Traceback" not in stderr and stderr.count("interrupted") == 1, what  # one line says it
    assert done and not any(n.startswith(".") for n in done), what  # whole outputs only
    assert 0 < len(done) < 12 and "not done (interrupted)" in stdout, what
    assert f"{len(done)} ok" in stdout, what

    proc = _cli("rewrite", tmp_path / "runs", "--out-dir", out, *options, "--skip-existing", "--quiet")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"{12 - len(done)} ok, 0 failed, {len(done)} skipped of 12" in stdout, stdout
    clean = tmp_path / "clean"
    wqkernels.rewrite_many(sources, clean, Recipe(bits=3, method="mse"), workers=2, progress=False)
    assert _files(out) == _files(clean)
    for src in sources:
        assert_same_datasets(out / src.name, clean / src.name)


# ---- dask --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::DeprecationWarning")
def test_dask_local_cluster(tmp_path, capsys):
    distributed = pytest.importorskip("distributed", reason="--dask needs dask.distributed")
    sources = _models(tmp_path / "runs", 3)
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        code, stdout, err = run_cli(["rewrite", tmp_path / "runs", "--out-dir", out, "--bits", "4",
                                     "--dask", cluster.scheduler_address], capsys)
    assert code == 0, err
    assert "3 ok, 0 failed, 0 skipped of 3" in stdout
    for src in sources:
        assert_same_datasets(out / src.name, _single(src, tmp_path))


@pytest.mark.slow
def test_dask_unreachable(tmp_path, capsys):
    pytest.importorskip("distributed", reason="--dask needs dask.distributed")
    sources = _models(tmp_path / "runs", 1)
    code, stdout, err = run_cli(["rewrite", *sources, "--out-dir", tmp_path / "out", "--bits", "4",
                                 "--dask", "tcp://127.0.0.1:9"], capsys)
    assert code == 1 and "cannot reach the dask scheduler" in err and "Traceback" not in err


# ---- command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,message", [
    (["SECOND", "-o", "x.h5"], "need --out-dir"), (["-o", "x.h5", "--workers", "2"], "need --out-dir"),
    (["--out-dir", "o", "--in-place"], "--in-place"), (["--out-dir", "o", "--workers", "0"], "at least 1"),
    (["--out-dir", "o", "--workers", "2", "--dask", "tcp://x:1"], "exclude each other"),
    (["-o", "x.h5", "--out-dir", "o"], None),
])
def test_command_line_refuses(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = _models(tmp_path / "runs", 1)[0]
    extra = [str(src) if e == "SECOND" else e for e in extra]
    if message is None:  # argparse: -o and --out-dir exclude each other
        with pytest.raises(SystemExit) as info:
            main(["rewrite", str(src), *extra])
        assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err
        return
    code, stdout, err = run_cli(["rewrite", src, *extra, "--bits", "4"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == {"runs/m00.h5"}


def test_single_file_rewrite_unchanged(tmp_path, capsys):
    src = _models(tmp_path / "runs", 1)[0]
    code, stdout, err = run_cli(["rewrite", src, "-o", tmp_path / "o.h5", "--bits", "4"], capsys)
    assert code == 0 and "weight" in stdout.splitlines()[0]  # the single-file report table
    assert_same_datasets(tmp_path / "o.h5", _single(src, tmp_path))


def test_quiet_summary(tmp_path, capsys):
    sources = _models(tmp_path / "runs", 2)
    code, stdout, err = run_cli(["rewrite", *sources, "--out-dir", tmp_path / "out", "--bits", "4", "--quiet"],
                                capsys)
    assert code == 0 and err == ""
    assert stdout.splitlines()[0].startswith("files: 2 ok, 0 failed, 0 skipped of 2;")


# ---- progress ----------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("use_tqdm", [True, False])
def test_progress_on_a_terminal(use_tqdm):
    if use_tqdm:
        pytest.importorskip("tqdm")
    stream = _Terminal()
    bar = progress_bar(2, 3_000_000, stream=stream, use_tqdm=use_tqdm)
    bar.advance(1_000_000)
    bar.advance(2_000_000)
    bar.close()
    text = stream.getvalue()
    assert "/2 files" in text and "B/s" in text and "\r" in text
    if not use_tqdm:
        assert "2/2 files  3.0/3.0 MB" in text and text.endswith("\r")


def test_no_progress_off_a_terminal_or_when_quiet():
    stream = io.StringIO()
    for bar in (progress_bar(2, 10, stream=stream), progress_bar(2, 10, stream=_Terminal(), enabled=False)):
        bar.advance(5)
        bar.close()
    assert stream.getvalue() == ""
