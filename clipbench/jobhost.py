"""The job host: one long-lived process per local study that has imported torch, transformers and
lm-eval once and forks a child for each `python -m clipbench.cli ...` job, so that a study's many
short jobs do not each pay those imports (about 8 s of CPU a job on a laptop core; docs/speed.md).

It changes how a job starts, never what it computes. A child is the host's fork, set up as the job's
own process would be: the job's stdin, stdout and stderr (passed over the socket), working directory,
environment and `sys.argv`; then `clipbench.cli` runs as `__main__`, exactly as `python -m
clipbench.cli` runs it. The job's own process (the *client*) waits for the child's exit status and
exits with it (a child killed by a signal: the client dies of the same signal); a SIGTERM, SIGINT or
SIGHUP sent to the client is passed on to the child, and a client that dies (even of SIGKILL) takes
its child with it.

The host serves a job only where a fresh process would run the same thing. It declines, and the
job runs in its own process as before, with one line on its stderr saying why, when:
- the job's environment differs from the host's in anything but the job shell's own variables
  (`SHELL_VARIABLES`): thread counts (Snakemake sets OMP_NUM_THREADS and its kin to the job's
  threads; the host is started with them at 1, so a multi-threaded job runs itself), PATH (a conda
  env), PYTHONPATH, CUDA_VISIBLE_DEVICES, a launcher's RANK, ...;
- the interpreter, `sys.path` or clipbench's source files (paths, sizes and modification times:
  `fingerprint`) differ: code edited during a study runs in fresh processes from then on;
- the host is not running or not reachable (no socket, a dead host, another machine).

Why forking is safe here: the host only imports. It runs no torch operation (no OpenMP or
intra-op thread pool has started), initialises no CUDA device, and its only thread besides Python's is
jemalloc's background thread (pyarrow's allocator), which jemalloc's own fork handlers take care of, as
they do for every torch DataLoader worker forked after `datasets` is imported. Each child then starts
whatever threads, devices and worker processes its job needs, as a fresh process would.

Who starts it: the Snakefile's `onstart` handler (`start`), for a local run only: not for a dry run,
not for a cluster executor (jobs run on other machines) and not with --use-conda (jobs run other
interpreters). It sets CLIPBENCH_JOB_HOST to the socket's path for the jobs. The host exits when the
Snakemake process that started it does (its stdin, a pipe from Snakemake, reaches end of file). Set
CLIPBENCH_JOB_HOST=off before running Snakemake to have every job start its own process.

    python -m clipbench.jobhost SOCKET_PATH [--preload MODULE ...]      (what `start` runs)
"""

from __future__ import annotations

import argparse
import atexit
import errno
import hashlib
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ENV_VAR = "CLIPBENCH_JOB_HOST"
OFF = "off"
# Set in a forked child's environment (and so its own children's): that process runs its job itself.
CHILD_VAR = "CLIPBENCH_JOB_HOST_CHILD"
# What a `clipbench.cli` job imports: train (torch, transformers, the trainer), evaluate (lm-eval and its
# hf model), aggregate and report (pandas, seaborn). A module missing from the install is skipped.
PRELOAD = (
    "clipbench.cli",
    "clipbench.trainer",
    "clipbench.evaluate",
    "lm_eval.evaluator",
    "lm_eval.models.huggingface",
    "clipbench.report",
    "clipbench.plots",
)
# Snakemake's thread variables (snakemake.shell sets each to the job's threads); the host runs with 1.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
# Snakemake's temporary-folder variables (set to the job's tmpdir resource, by default the system's).
TMPDIR_VARIABLES = ("TMPDIR", "TMP", "TEMPDIR", "TEMP")
# Variables the job's shell sets for itself, which a fresh process would see but which change nothing.
SHELL_VARIABLES = frozenset({"_", "SHLVL", "PWD", "OLDPWD", "PS1", "PS2"})  # bash unsets PS1, PS2
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Set by torchrun and accelerate for each process they start: a rank of a multi-process job runs itself
# (it would be declined anyway, for its RANK, WORLD_SIZE, ...; this keeps its log free of that line).
LAUNCHED_RANK = "LOCAL_RANK"
_HEADER = struct.Struct("!Q")
_PACKAGE = Path(__file__).resolve().parent
_started: subprocess.Popen | None = None  # the host `start` began (kept: its stdin pipe keeps it alive)


# --- what a job runs ---------------------------------------------------------------------------


def fingerprint() -> dict[str, object]:
    """The interpreter, its flags, `sys.path` and clipbench's source files (a digest of each one's path,
    size and modification time): equal in the host and in a job's process when a fresh process would run the
    same code."""
    return {
        "interpreter": os.path.realpath(sys.executable),  # `python` and `python3` are one program
        "sys.prefix": sys.prefix,  # its venv
        "sys.path": sys.path,
        "sys.flags": list(sys.flags),  # -O, -B, -u, ...
        "clipbench's files": _source_digest(),
    }


def fingerprint_difference(job: dict[str, object], host: dict[str, object]) -> str | None:
    """None when the two fingerprints are equal, else what differs, with both values."""
    for name in host:
        if job.get(name) != host[name]:
            return f"{name} is {job.get(name)!r} in the job, {host[name]!r} in the host"
    return None


def _source_digest() -> str:
    sources = []
    for folder, folders, files in os.walk(_PACKAGE):
        folders[:] = [name for name in folders if name != "__pycache__"]
        sources += [os.path.join(folder, name) for name in files if name.endswith((".py", ".yaml"))]
    digest = hashlib.sha256(str(_PACKAGE).encode())
    for path in sorted(sources):
        stat = os.stat(path)
        digest.update(f"{path} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def environment_difference(job: dict[str, str], host: dict[str, str]) -> str | None:
    """None when the job's environment equals the host's (the shell's own variables aside), else the
    first variable that differs, named with both values."""
    for name in sorted((set(job) | set(host)) - SHELL_VARIABLES - {ENV_VAR, CHILD_VAR}):
        if job.get(name) != host.get(name):
            return f"{name} is {job.get(name)!r} in the job, {host.get(name)!r} in the host"
    return None


# --- the job's side ----------------------------------------------------------------------------


def delegate(module: str = "clipbench.cli") -> int | None:
    """Run this process's job (`python -m MODULE` with `sys.argv`) in a child of the job host.
    Returns the child's exit code (negative: killed by that signal), or None when there is no host
    to ask or it declines (the caller then runs the job itself; a decline prints why on stderr)."""
    path = os.environ.get(ENV_VAR)
    if not path or path == OFF or os.environ.get(CHILD_VAR) or LAUNCHED_RANK in os.environ:
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
    except OSError:
        client.close()
        return None  # no host here (not started yet, ended, or on another machine)
    with client:
        request = {
            "module": module,
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "fingerprint": fingerprint(),
        }
        payload = json.dumps(request).encode()
        try:
            socket.send_fds(client, [_HEADER.pack(len(payload))], [0, 1, 2])
            client.sendall(payload)
            reader = client.makefile("r", encoding="utf-8")
            first = reader.readline().split(" ", 1)
        except OSError:
            return None
        if first[0] != "pid":
            reason = first[1].strip() if len(first) > 1 else "the host closed the connection"
            print(
                f"clipbench: the job host declined ({reason}); the job runs in its own process",
                file=sys.stderr,
            )
            return None
        child = int(first[1])
        previous = {number: signal.signal(number, _forward_to(child)) for number in FORWARDED_SIGNALS}
        try:
            last = reader.readline().split()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    if len(last) != 2 or last[0] != "exit":
        print("clipbench: the job host ended before the job did", file=sys.stderr)
        return 1
    return int(last[1])


def _forward_to(child: int):
    """A handler passing the signal on to the child. A terminal's SIGINT and SIGHUP go to its whole
    foreground process group: a child in the client's group has had them already."""

    def forward(number, frame):
        try:
            if number == signal.SIGTERM or os.getpgid(child) != os.getpgrp():
                os.kill(child, number)
        except ProcessLookupError:
            pass

    return forward


def exit_like(code: int) -> None:
    """Leave this process as the child left: with its exit code, or killed by its signal."""
    if code < 0:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)  # the signal is delivered before kill returns; this line is not reached
        code = 128 - code
    sys.exit(code)


# --- the host's side ---------------------------------------------------------------------------


def start(workflow) -> str | None:
    """From the Snakefile's onstart handler: start the host for a local, non-conda run and point the
    jobs at it (CLIPBENCH_JOB_HOST); returns the socket path, None when no host is started."""
    global _started
    if os.environ.get(ENV_VAR) == OFF or _started is not None or not hasattr(socket, "send_fds"):
        return None  # off, started already, or no fd passing over Unix sockets here (Windows)
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    if not workflow.local_exec or workflow.remote_exec or workflow.subprocess_exec or workflow.touch:
        return None
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="clipbench-host-"), "socket")
    # A one-thread job's environment as snakemake.shell makes it (threads, the default tmpdir resource).
    env = {
        **os.environ,
        **dict.fromkeys(THREAD_VARIABLES, "1"),
        **dict.fromkeys(TMPDIR_VARIABLES, tempfile.gettempdir()),
        ENV_VAR: path,
    }
    _started = subprocess.Popen(
        [sys.executable, "-m", "clipbench.jobhost", path, "--remove-folder"],
        stdin=subprocess.PIPE,
        env=env,
        close_fds=True,
    )
    os.environ[ENV_VAR] = path  # the jobs Snakemake starts from here on inherit it
    atexit.register(stop)
    return path


def stop(timeout: float = 30) -> int | None:
    """Stop the host `start` began (its stdin closed: it stops its children, removes its socket and
    exits) and wait for it; returns its exit code (None: none was started). Runs when Snakemake exits;
    a Snakemake killed outright closes that pipe all the same, and the host stops on its own."""
    global _started
    host, _started = _started, None
    if host is None:
        return None
    host.stdin.close()
    try:
        return host.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        host.kill()
        return host.wait()


def serve(path: str, preload: tuple[str, ...] = PRELOAD, remove_folder: bool = False) -> None:
    """Listen on `path` (jobs that connect meanwhile wait), import `preload`, then fork a child per
    job until stdin reaches end of file; then stop the children still running and remove the socket
    (and its folder with `remove_folder`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is Snakemake's to handle
    signal.signal(signal.SIGTERM, _stop)  # stopped: the children and the socket go too (finally below)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    # What a fresh process starts with, taken before the imports (which may extend sys.path, as they would in
    # a job's own process).
    environment = dict(os.environ)
    code = fingerprint()
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "listener")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    children: dict[int, socket.socket] = {}  # child pid -> its client's connection
    try:
        while True:
            for key, _ in selector.select(timeout=0.05):
                if key.data == "stdin":
                    if not os.read(sys.stdin.fileno(), 4096):
                        return
                elif key.data == "listener":
                    connection, _ = listener.accept()
                    child = _accept(connection, environment, code, [listener, *children.values()], selector)
                    if child is None:
                        connection.close()
                    else:
                        children[child] = connection
                        selector.register(connection, selectors.EVENT_READ, child)
                else:  # a client's connection: readable only when its process has gone
                    os.kill(key.data, signal.SIGKILL)
            _reap(children, selector)
    finally:
        for child in children:
            os.kill(child, signal.SIGKILL)
        listener.close()
        os.unlink(path)
        if remove_folder:
            os.rmdir(os.path.dirname(path))


def _stop(number, frame):
    raise SystemExit(128 + number)


def _accept(connection, environment, code, sockets, selector) -> int | None:
    """Read one job's request; decline it (None) or fork its child and tell the client its pid."""
    try:
        header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
        (size,) = _HEADER.unpack(header)
        request = json.loads(_receive(connection, size))
    except (OSError, ValueError, struct.error):
        return None
    try:
        reason = fingerprint_difference(request["fingerprint"], code) or environment_difference(
            request["env"], environment
        )
        if reason is not None or len(fds) != 3:
            connection.sendall(f"declined {reason or 'no stdin, stdout and stderr'}\n".encode())
            return None
        child = os.fork()
        if child == 0:
            _run_child(request, fds, [*sockets, connection], selector)
        try:
            connection.sendall(f"pid {child}\n".encode())
        except OSError:
            pass  # the client has gone: its connection reads as closed, and the child is stopped then
        return child
    finally:
        for fd in fds:
            os.close(fd)


def _receive(connection, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise OSError(errno.ECONNRESET, "the client left mid-request")
        data += chunk
    return bytes(data)


def _reap(children: dict[int, socket.socket], selector) -> None:
    """Tell each finished child's client its exit code."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is None:
            continue
        selector.unregister(connection)
        try:
            connection.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
        except OSError:
            pass  # the client has gone
        connection.close()


def _run_child(request: dict, fds: list[int], sockets, selector) -> None:
    """In the forked child: become the job's process and run it; never returns."""
    code = 1
    try:
        selector.close()
        for open_socket in sockets:  # the host's listener and its clients' connections
            open_socket.close()
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[CHILD_VAR] = "1"
        sys.argv = list(request["argv"])
        # As under `python -m`: the module runs as __main__, not as the copy the host imported.
        sys.modules.pop(request["module"], None)
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clipbench.jobhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("socket", help="the path to listen on")
    parser.add_argument(
        "--preload", nargs="*", default=None, help="modules to import before serving (default: PRELOAD)"
    )
    parser.add_argument("--remove-folder", action="store_true", help="remove the socket's folder on exit")
    args = parser.parse_args(argv)
    # As a job's own `python -m clipbench.cli` does, before its imports (clipbench/cpu_kernels.py).
    from clipbench import cpu_kernels

    cpu_kernels.pin()
    serve(args.socket, PRELOAD if args.preload is None else tuple(args.preload), args.remove_folder)


if __name__ == "__main__":
    main()
