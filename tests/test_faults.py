"""Faults of the machine: full disks, signals, killed processes, concurrent writers."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest


def write_big_legacy(path, layers: int = 6) -> None:
    """A legacy .h5 of `layers` Dense layers of 256x512 (3 MB)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        mw = f.create_group("model_weights")
        names = [f"dense_{i}" for i in range(layers)]
        mw.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in names:
            g = mw.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}/kernel:0".encode(), f"{n}/bias:0".encode()])
            g[f"{n}/kernel:0"] = rng.standard_normal((256, 512)).astype(np.float32)
            g[f"{n}/bias:0"] = rng.standard_normal(512).astype(np.float32)


def cli(*args, limit_bytes: int | None = None, **popen) -> subprocess.CompletedProcess:
    """The command line in a fresh interpreter; with `limit_bytes`, files it writes may not grow
    beyond that (RLIMIT_FSIZE: the write fails with EFBIG, as on a full disk with ENOSPC)."""
    # the limit is set by the child itself: a preexec_fn would fork this process, which JAX
    # (imported by other tests) warns against
    start = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); "
             "sys.argv = ['wqkernels', *sys.argv[1:]]; runpy.run_module('wqkernels', run_name='__main__')")
    command = ["-c", start] if limit_bytes else ["-m", "wqkernels"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120, **popen)


@pytest.mark.parametrize("options", [["--compress", "gzip"], ["--storage", "packed"],
                                     ["--storage", "packed", "--compress", "gzip"], [],
                                     ["--storage", "float16", "--compress", "lzf"]])
@pytest.mark.parametrize("limit", [60_000, 300_000, 1_000_000])
def test_write_refused_by_the_file_system_is_one_line(options, limit, tmp_path):
    """A full disk while writing a gzip or packed output printed the error, then segfaulted in
    HDF5's clean-up (it does not recover from a failed write); now one line, nothing left."""
    src = tmp_path / "big.h5"
    write_big_legacy(src)
    out = tmp_path / "out"
    out.mkdir()
    done = cli("rewrite", src, "-o", out / "o.h5", "--bits", "4", *options, limit_bytes=limit)
    assert done.returncode in (0, 1), done.stderr
    if done.returncode == 1:
        assert done.stderr == f"wqkernels rewrite: error: {out / 'o.h5'}: cannot write (File too large)\n"
        assert os.listdir(out) == []
    else:
        assert done.stderr == "" and os.listdir(out) == ["o.h5"]


def test_keras_archive_refused_write_is_one_line(tmp_path):
    import zipfile
    weights = tmp_path / "w.h5"
    with h5py.File(weights, "w") as f:
        f["layers/dense/vars/0"] = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    src = tmp_path / "m.keras"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("config.json", "{}")
        # compressed: a member stored as Keras stores it is read in place, not extracted
        z.write(weights, "model.weights.h5", compress_type=zipfile.ZIP_DEFLATED)
    out = tmp_path / "out"
    out.mkdir()
    done = cli("rewrite", src, "-o", out / "o.keras", "--bits", "4", limit_bytes=200_000)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"m.keras: cannot extract model.weights.h5 into {out} (File too large)" in done.stderr
    assert os.listdir(out) == []


# ---- signals, leftovers, concurrent writers -----------------------------------------------------

def _slow_rewrite(src, dst, *extra, **popen) -> subprocess.Popen:
    """A rewrite that takes a few seconds (mse scales of many large kernels)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-m", "wqkernels", "rewrite", str(src), "-o", str(dst), "--bits", "3",
                             "--method", "mse", "--granularity", "block:8", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **popen)


def _wait_for_temp(directory, proc, what=".tmp", written=False) -> str:
    """The name of the first temporary file of `proc` in `directory`; with `written`, once the
    writer has written to it (it is past creating it: the instant a temporary file appears is
    inside its creation)."""
    import time
    deadline = time.monotonic() + 60
    while True:
        names = [n for n in os.listdir(directory) if n.endswith(what) or n.startswith(".wqkernels-")]
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                if not written or os.stat(os.path.join(directory, name)).st_size > 0:
                    return name
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)


@pytest.fixture
def slow_source(tmp_path):
    src = tmp_path / "src" / "big.h5"
    src.parent.mkdir()
    write_big_legacy(src, layers=24)
    return src


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_stops_a_single_rewrite_leaving_nothing(signum, slow_source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = _slow_rewrite(slow_source, out / "o.h5")
    _wait_for_temp(out, proc, written=True)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert stderr == "wqkernels rewrite: interrupted\n"
    assert os.listdir(out) == []


def test_signal_ignored_at_start_stays_ignored(slow_source, tmp_path):
    """A rewrite started ignoring Ctrl-C and SIGHUP (nohup, a shell script's background job)
    goes on through them, as Python leaves them ignored."""
    out = tmp_path / "out"
    out.mkdir()
    # (ignored by the child itself before the package runs: a preexec_fn would fork this process)
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
             "signal.signal(signal.SIGHUP, signal.SIG_IGN); sys.argv = ['wqkernels', *sys.argv[1:]]; "
             "runpy.run_module('wqkernels', run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", start, "rewrite", str(slow_source), "-o", str(out / "o.h5"), "--bits",
                             "3", "--method", "mse", "--granularity", "block:8"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_temp(out, proc, written=True)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGHUP)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stderr == "", stderr
    assert os.listdir(out) == ["o.h5"]


def test_interrupt_as_a_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    """An interrupt delivered right after the temporary file is created (before its writer held
    it) stopped the write and left the file behind."""
    from wqkernels.files import atomic
    real_open = os.open

    def open_then_interrupted(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if os.fspath(path).endswith(".tmp"):
            os.kill(os.getpid(), signal.SIGINT)
        return fd

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(os, "open", open_then_interrupted)
        with pytest.raises(KeyboardInterrupt), atomic.written(str(tmp_path / "o.h5")):
            pass
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGINT, previous)
    assert os.listdir(tmp_path) == []
    assert not any(p.startswith(str(tmp_path)) for p in atomic._HELD)


def test_hard_kill_leftovers_removed_by_the_next_rewrite_there(slow_source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = _slow_rewrite(slow_source, out / "o.h5")
    _wait_for_temp(out, proc)
    proc.kill()
    proc.communicate()
    assert os.listdir(out) != []  # a hard kill cleans nothing
    done = cli("rewrite", slow_source, "-o", out / "o.h5", "--bits", "8")
    assert done.returncode == 0, done.stderr
    assert os.listdir(out) == ["o.h5"]


def test_keras_scratch_of_a_hard_kill_removed_by_the_next_rewrite_there(tmp_path):
    import zipfile
    src = tmp_path / "m.keras"
    weights = tmp_path / "w.h5"
    write_big_legacy(weights, layers=1)
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("config.json", "{}")
        z.write(weights, "model.weights.h5")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".wqkernels-deadbeef.weights.h5").write_bytes(b"x" * 1000)  # what a SIGKILL leaves
    (out / ".o.keras.0123abcd.tmp").write_bytes(b"partial")
    (out / ".other.keras.0123abcd.tmp").write_bytes(b"another destination's: kept")
    assert cli("rewrite", src, "-o", out / "o.keras", "--bits", "8").returncode == 0
    assert sorted(os.listdir(out)) == [".other.keras.0123abcd.tmp", "o.keras"]


def _writer_of(dst) -> subprocess.Popen:
    """Another process in the middle of writing `dst`: it holds a temporary file beside it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    code = ("import sys, time; from wqkernels.files import atomic; "
            "print(atomic.temp_beside(sys.argv[1]), flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dst)], stdout=subprocess.PIPE, text=True, env=env)
    proc.temp = proc.stdout.readline().strip()
    return proc


def test_second_rewrite_into_the_same_destination_refused_while_the_first_runs(tmp_path):
    src = tmp_path / "m.h5"
    write_big_legacy(src, layers=1)
    out = tmp_path / "out"
    out.mkdir()
    writer = _writer_of(out / "o.h5")
    try:
        second = cli("rewrite", src, "-o", out / "o.h5", "--bits", "8")
        assert second.returncode == 1
        assert second.stderr == f"wqkernels rewrite: error: {out / 'o.h5'}: another process is writing it right " \
                                f"now; refused (try again once it is done)\n"
        assert cli("rewrite", src, "-o", out / "other.h5", "--bits", "8").returncode == 0  # others go on
    finally:
        writer.kill()
        writer.communicate()
    assert cli("rewrite", src, "-o", out / "o.h5", "--bits", "8").returncode == 0  # its writer is gone
    assert sorted(os.listdir(out)) == ["o.h5", "other.h5"]


def test_two_writers_starting_at_once_one_writes(tmp_path):
    """Two writers of one destination that each created their temporary file before looking for
    the other's both refused, and neither wrote: creating and looking are one step."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # each writer, between creating its temporary file and looking for another, waits (up to 2 s)
    # until the other has created its own, and after looking until the other has looked too
    code = ("import os, sys, time; from wqkernels.files import atomic; me, other, dst = sys.argv[1:]; "
            "check = atomic._check_alone\n"
            "def wait(mine, theirs):\n"
            "    open(mine, 'w').close(); end = time.time() + 2\n"
            "    while not os.path.exists(theirs) and time.time() < end: time.sleep(0.01)\n"
            "def slow(*a):\n"
            "    wait(me, other)\n"
            "    try: check(*a)\n"
            "    finally: wait(me + '.done', other + '.done')\n"
            "atomic._check_alone = slow\n"
            "try:\n"
            "    with atomic.written(dst) as tmp: open(tmp, 'w').write(me)\n"
            "except atomic.KerasFileError as exc: sys.exit(str(exc))\n")
    dst, a, b = tmp_path / "o.json", tmp_path / "a", tmp_path / "b"
    writers = [subprocess.Popen([sys.executable, "-c", code, str(me), str(other), str(dst)], env=env,
                                stderr=subprocess.PIPE, text=True) for me, other in ((a, b), (b, a))]
    results = [(w.communicate()[1], w.returncode)[::-1] for w in writers]
    assert sorted(rc for rc, _ in results)[0] == 0, results
    assert dst.read_text() in (str(a), str(b))
    assert sorted(os.listdir(tmp_path)) == ["a", "a.done", "b", "b.done", "o.json"]


def test_batch_keeps_the_temporary_file_of_a_running_single_rewrite(tmp_path):
    """A batch into a directory removed the temporary files of a single rewrite running there,
    which then failed: only files whose writer is gone (its lock free) are removed."""
    out = tmp_path / "out"
    out.mkdir()
    writer = _writer_of(out / "m.h5")
    try:
        src = tmp_path / "src" / "m.h5"
        src.parent.mkdir()
        write_big_legacy(src, layers=1)
        done = cli("rewrite", src, "--out-dir", out, "--bits", "8", "--workers", "1")
        assert done.returncode == 1 and "another process is writing it right now" in done.stderr
        assert os.path.exists(writer.temp)
    finally:
        writer.kill()
        writer.communicate()
    done = cli("rewrite", src, "--out-dir", out, "--bits", "8", "--workers", "1")
    assert done.returncode == 0 and "removed 1 temporary file(s)" in done.stdout, done.stdout
    assert os.listdir(out) == ["m.h5"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_non_regular_destination_refused(kind, tmp_path):
    target = tmp_path / "fifo.h5" if kind == "fifo" else "/dev/null"
    if kind == "fifo":
        os.mkfifo(target)
    src = tmp_path / "m.h5"
    write_big_legacy(src, layers=1)
    for args in (["-o", target], ["-o", tmp_path / "o.h5", "--report", target]):
        done = cli("rewrite", src, *args, "--bits", "8")
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"{target}: is a {'FIFO' if kind == 'fifo' else 'device'}, not a regular file; refused" in done.stderr
    assert os.stat(target).st_mode == os.stat(target).st_mode and not os.path.isfile(target)


@pytest.mark.parametrize("existing", [True, False])
def test_destination_through_a_symbolic_link_writes_its_target(existing, tmp_path):
    """A write through a link lands in its target and keeps the link (as Keras, h5py and the
    shell write through it); renaming over the link replaced it with a regular file."""
    src = tmp_path / "m.h5"
    write_big_legacy(src, layers=1)
    target, link = tmp_path / "models" / "v3.h5", tmp_path / "o.h5"
    target.parent.mkdir()
    if existing:
        target.write_bytes(b"old")
    link.symlink_to(target)
    done = cli("rewrite", src, "-o", link, "--bits", "8")
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.is_file() and h5py.is_hdf5(target)
    assert sorted(os.listdir(tmp_path)) == ["m.h5", "models", "o.h5"] and os.listdir(target.parent) == ["v3.h5"]


def test_second_rewrite_through_a_link_to_the_destination_refused_while_the_first_runs(tmp_path):
    src = tmp_path / "m.h5"
    write_big_legacy(src, layers=1)
    (tmp_path / "alias.h5").symlink_to(tmp_path / "o.h5")
    writer = _writer_of(tmp_path / "o.h5")
    try:
        second = cli("rewrite", src, "-o", tmp_path / "alias.h5", "--bits", "8")
        assert second.returncode == 1 and "another process is writing it right now" in second.stderr, second.stderr
    finally:
        writer.kill()
        writer.communicate()
    assert (tmp_path / "alias.h5").is_symlink()


def test_link_to_a_device_refused_and_kept(tmp_path):
    (tmp_path / "o.h5").symlink_to("/dev/null")
    src = tmp_path / "m.h5"
    write_big_legacy(src, layers=1)
    done = cli("rewrite", src, "-o", tmp_path / "o.h5", "--bits", "8")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "is a device" in done.stderr, done.stderr
    assert (tmp_path / "o.h5").is_symlink() and os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_interrupt_swallowed_on_its_way_still_stops_the_rename(tmp_path, monkeypatch, capsys):
    """Ctrl-C raised where Python cannot propagate it (a finaliser, a C callback) was lost and
    the rewrite completed with exit 0: the command line's handler also stops the rename."""
    from wqkernels.cli import main
    from wqkernels.files import atomic, transform
    src = tmp_path / "m.h5"
    write_big_legacy(src, layers=1)
    real = transform.prepare

    def prepare(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        except KeyboardInterrupt:
            pass  # swallowed, as in a finaliser
        return real(*args, **kwargs)
    import importlib
    monkeypatch.setattr(importlib.import_module("wqkernels.files.rewrite"), "prepare", prepare)
    code = main(["rewrite", str(src), "-o", str(tmp_path / "o.h5"), "--bits", "8"])
    assert code == 130 and capsys.readouterr().err == "wqkernels rewrite: interrupted\n"
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]
    assert not atomic.STOP.is_set() or main(["inspect", str(src)]) == 0


def test_interrupt_while_the_package_imports_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the first second of the command, while NumPy and the kernels are still being
    imported, ends it with one line (exit 130), not an import traceback."""
    import wqkernels.cli as cli

    class Interrupted:
        def find_spec(self, name, path=None, target=None):
            if name == "wqkernels.cli.app":
                raise KeyboardInterrupt
            return None
    monkeypatch.delitem(sys.modules, "wqkernels.cli.app", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    assert cli.main(["inspect", "x.h5"]) == 130
    assert capsys.readouterr().err == "wqkernels: interrupted\n"


def test_interrupt_in_a_finaliser_prints_no_traceback(tmp_path, monkeypatch, capsys):
    """Python reports an exception raised in a finaliser as "Exception ignored in ..." with a
    traceback; an interrupt landing there is the command's interrupt, reported as one line."""
    from wqkernels.cli import main
    from wqkernels.files import transform
    src = tmp_path / "m.h5"
    write_big_legacy(src, layers=1)
    real = transform.prepare

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs here, inside the finaliser
                pass

    def prepare(*args, **kwargs):
        Finalised()
        return real(*args, **kwargs)
    import importlib
    monkeypatch.setattr(importlib.import_module("wqkernels.files.rewrite"), "prepare", prepare)
    code = main(["rewrite", str(src), "-o", str(tmp_path / "o.h5"), "--bits", "8"])
    assert code == 130 and capsys.readouterr().err == "wqkernels rewrite: interrupted\n"
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]


def test_workers_end_when_the_batch_parent_is_killed(tmp_path):
    """SIGKILL of a batch's parent left the forkserver, resource tracker and workers running,
    holding its stdout/stderr open: the workers now end with their parent, and the rest follow."""
    import select
    import time
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(4):
        write_big_legacy(runs / f"m{i}.h5", layers=24)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "wqkernels", "rewrite", str(runs), "--out-dir", str(out),
                             "--bits", "3", "--method", "mse", "--granularity", "block:8", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not (out.exists() and any(n.endswith(".tmp") for n in os.listdir(out))):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    streams = [proc.stdout, proc.stderr]
    while streams:  # EOF on both once nothing holds them open
        ready, _, _ = select.select(streams, [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "a process of the killed batch still holds its output open"
        for s in ready:
            if not os.read(s.fileno(), 65536):
                streams.remove(s)
                s.close()


def test_rewrite_many_from_a_script_without_a_main_guard(tmp_path):
    """multiprocessing makes every worker import the script: one calling rewrite_many at its top
    level failed every file with 'the worker process died'."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(3):
        write_big_legacy(runs / f"m{i}.h5", layers=1)
    script = tmp_path / "script.py"
    script.write_text("import wqkernels\n"
                      f"result = wqkernels.rewrite_many([{str(runs)!r}], {str(tmp_path / 'out')!r}, "
                      "wqkernels.Recipe(bits=8), workers=2, progress=False)\n"
                      "print('done', len(result))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout == "done 3\n", done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["m0.h5", "m1.h5", "m2.h5"]


def test_report_on_a_full_disk_leaves_no_empty_file(tmp_path, monkeypatch, capsys):
    """--report is written like the outputs: a temporary file renamed into place when whole."""
    import errno
    import json as json_module

    from wqkernels.cli import main
    src = tmp_path / "m.h5"
    write_big_legacy(src, layers=1)

    def full(document, f, **kwargs):
        f.write("{")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(json_module, "dump", full)
    report = tmp_path / "r.json"
    code = main(["rewrite", str(src), "-o", str(tmp_path / "o.h5"), "--bits", "8", "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 1 and err == f"wqkernels rewrite: error: {report}: cannot write the report (No space left on device)\n"
    assert sorted(os.listdir(tmp_path)) == ["m.h5", "o.h5"]
