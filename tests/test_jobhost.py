"""The job host (clipbench/jobhost.py): a job it serves sees its own stdin, stdout, stderr, working
directory, argv and environment and leaves with its own exit code; a job it should not serve runs in
its own process; signals reach the child and a dead client takes its child along; the host stops
with the Snakemake process that started it. The jobs are tests/jobhost_probe.py; the host imports
nothing extra (--preload with no module) to keep these fast. That a real study's csv files are the
same with and without the host is CI's stage 1 (the default study against docs/default_study/)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from clipbench import jobhost

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def job_environment(socket_path: Path, **extra: str) -> dict[str, str]:
    # pytest's PYTEST_CURRENT_TEST names the phase, other in the fixture than in the test.
    mine = (jobhost.ENV_VAR, jobhost.CHILD_VAR, "PYTEST_CURRENT_TEST")
    env = {key: value for key, value in os.environ.items() if key not in mine}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    env[jobhost.ENV_VAR] = str(socket_path)
    env.update(dict.fromkeys(jobhost.THREAD_VARIABLES, "1"))
    env.update(extra)
    return env


@pytest.fixture
def host(tmp_path):
    """A host on tmp_path/socket (in tmp_path as its working directory, as Snakemake starts it in the
    study's); yields (socket path, Popen); stops it by closing its stdin."""
    path = tmp_path / "socket"
    process = subprocess.Popen(
        [sys.executable, "-m", "clipbench.jobhost", str(path), "--preload"],
        stdin=subprocess.PIPE,
        cwd=tmp_path,
        env=job_environment(path),
    )
    deadline = time.time() + 60
    while not path.exists():
        assert process.poll() is None and time.time() < deadline, "the host did not start"
        time.sleep(0.05)
    yield path, process
    if process.poll() is None:
        process.stdin.close()
        process.wait(timeout=30)


def probe(socket_path, cwd, *args, stdin="", timeout=60, **extra):
    return subprocess.run(
        [sys.executable, "-m", "jobhost_probe", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=job_environment(socket_path, **extra),
    )


def test_a_served_job_has_its_own_stdio_cwd_argv_environment_and_exit_code(host, tmp_path):
    path, process = host
    result = probe(path, tmp_path, "exit", "3", stdin="to the job's stdin", SHLVL="7")
    assert result.returncode == 3, result.stderr
    seen = json.loads(result.stdout)
    assert seen["hosted"], result.stderr
    assert seen["cwd"] == str(tmp_path)
    assert seen["argv"] == ["exit", "3"] and seen["argv0"] == "jobhost_probe.py"
    assert seen["stdin"] == "to the job's stdin"
    assert seen["shlvl"] == "7"  # the job's own value of a variable that does not decline it
    assert result.stderr == "the probe's stderr\n"  # nothing else: no warning, no decline
    assert process.poll() is None  # the host serves on
    again = probe(path, tmp_path, "report")
    assert again.returncode == 0 and json.loads(again.stdout)["hosted"]
    assert json.loads(again.stdout)["pid"] != seen["pid"]  # a child per job


def test_a_served_job_that_raises_prints_its_traceback_and_exits_1(host, tmp_path):
    path, _ = host
    result = probe(path, tmp_path, "raise")
    assert result.returncode == 1
    assert "ValueError: the probe's own error" in result.stderr and "Traceback" in result.stderr


def test_a_job_whose_environment_or_code_differs_runs_in_its_own_process_and_says_why(host, tmp_path):
    path, _ = host
    other = probe(path, tmp_path, "report", OMP_NUM_THREADS="2")
    assert other.returncode == 0
    assert not json.loads(other.stdout)["hosted"]
    assert "job host declined (OMP_NUM_THREADS is '2' in the job, '1' in the host)" in other.stderr
    # Another working directory: another sys.path[0] for `python -m`, another program.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = probe(path, elsewhere, "report")
    assert not json.loads(moved.stdout)["hosted"] and "sys.path is" in moved.stderr
    # A launcher's rank (torchrun, accelerate) runs itself without asking: no line in its log.
    rank = probe(path, tmp_path, "report", LOCAL_RANK="0")
    assert not json.loads(rank.stdout)["hosted"] and rank.stderr == "the probe's stderr\n"


def test_without_a_host_or_with_it_off_a_job_runs_in_its_own_process_silently(tmp_path):
    for value in (str(tmp_path / "no-such-socket"), jobhost.OFF):
        result = probe(value, tmp_path, "report")
        assert result.returncode == 0 and not json.loads(result.stdout)["hosted"]
        assert result.stderr == "the probe's stderr\n"


def wait_for_pid(pid_file: Path) -> int:
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.time() < deadline, "the probe did not start"
        time.sleep(0.05)
    return int(pid_file.read_text())


def gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def start_sleeper(path, tmp_path):
    pid_file = tmp_path / "pid"
    client = subprocess.Popen(
        [sys.executable, "-m", "jobhost_probe", "sleep", str(pid_file)],
        cwd=tmp_path,
        env=job_environment(path),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: only what is sent to the client reaches it
    )
    child = wait_for_pid(pid_file)
    assert child != client.pid  # the host's child sleeps, the client waits for it
    return client, child


def test_sigterm_to_the_client_reaches_the_child_and_the_client_dies_of_it(host, tmp_path):
    path, _ = host
    client, child = start_sleeper(path, tmp_path)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == -signal.SIGTERM
    assert gone(child)


def test_a_client_killed_outright_takes_its_child_along(host, tmp_path):
    path, process = host
    client, child = start_sleeper(path, tmp_path)
    client.kill()
    client.wait(timeout=30)
    assert gone(child)
    assert process.poll() is None


def test_the_host_stops_with_its_stdin_and_takes_its_children_and_socket_along(host, tmp_path):
    path, process = host
    client, child = start_sleeper(path, tmp_path)
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    assert gone(child) and not path.exists()
    assert client.wait(timeout=30) == 1
    assert "the job host ended before the job did" in client.stderr.read()


def test_environment_difference_ignores_only_the_shells_own_variables():
    host = {"A": "1", "PATH": "/bin", "SHLVL": "1"}
    assert jobhost.environment_difference({"A": "1", "PATH": "/bin", "SHLVL": "3", "_": "x"}, host) is None
    assert jobhost.environment_difference({"A": "1", "SHLVL": "1"}, host) == (
        "PATH is None in the job, '/bin' in the host"
    )
    assert (
        jobhost.environment_difference({**host, "RANK": "0"}, host)
        == "RANK is '0' in the job, None in the host"
    )


def test_the_source_digest_follows_clipbenchs_files(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "rule.py").write_text("x = 1\n")
    monkeypatch.setattr(jobhost, "_PACKAGE", tmp_path)
    first = jobhost._source_digest()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "rule.cpython-311.pyc").write_bytes(b"compiled")
    assert jobhost._source_digest() == first  # bytecode is not source
    (tmp_path / "methods" / "new_rule.py").write_text("y = 2\n")
    second = jobhost._source_digest()
    assert second != first  # a new method file
    (tmp_path / "methods" / "rule.py").write_text("x = 10\n")
    assert jobhost._source_digest() != second  # an edit


def fake_workflow(local=True, conda=False):
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    methods = {DeploymentMethod.CONDA} if conda else set()
    return SimpleNamespace(
        local_exec=local,
        remote_exec=False,
        subprocess_exec=False,
        touch=False,
        deployment_settings=SimpleNamespace(deployment_method=methods),
    )


def test_start_serves_local_runs_only(monkeypatch, tmp_path):
    monkeypatch.setattr(jobhost, "_started", None)
    monkeypatch.delenv(jobhost.ENV_VAR, raising=False)
    assert jobhost.start(fake_workflow(local=False)) is None  # a cluster's jobs run elsewhere
    assert jobhost.start(fake_workflow(conda=True)) is None  # --use-conda: other interpreters
    monkeypatch.setenv(jobhost.ENV_VAR, jobhost.OFF)
    assert jobhost.start(fake_workflow()) is None
    monkeypatch.delenv(jobhost.ENV_VAR)
    monkeypatch.chdir(tmp_path)
    path = jobhost.start(fake_workflow())
    try:
        assert path is not None and os.environ[jobhost.ENV_VAR] == path
        assert jobhost.start(fake_workflow()) is None  # one host per Snakemake process
    finally:
        assert jobhost.stop(timeout=120) == 0  # as when Snakemake exits (atexit)
    assert not os.path.exists(os.path.dirname(path))  # its socket's folder is gone with it
    assert jobhost.stop() is None
