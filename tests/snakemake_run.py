"""`snakemake ...` for the tests: a call that runs no job (a dry run, lint) in this process, any
other call as a subprocess, both returning a `subprocess.CompletedProcess` with Snakemake's stdout
and stderr as text.

Why: each `python -m snakemake` pays Snakemake's imports and the Snakefile's (clipbench.study
imports torch), about 5.6 s; in this process they are paid once per pytest worker. In-process the
call goes through Snakemake's own CLI entry point (`snakemake.cli.main(argv)`, as the `snakemake`
command does), with the working directory changed to `cwd`, so the arguments, the profiles it finds
(profiles/default is looked up from the working directory) and what it prints are the command's.

What the call could leave behind in this process is undone after it: the working directory, sys.path
(Snakemake puts the Snakefile's folder first), os.environ, sys.argv, the SIGTERM handler (Snakemake's
scheduler installs one) and the handlers, level and propagation of Snakemake's logger. Snakemake's
stream handler writes to the sys.stdout (dry run) or sys.stderr (otherwise) it finds when its API
starts, so both are redirected before: each call's output is its own, and no handler outlives it.

Stays a subprocess: any call without -n/--dry-run/--lint (a real run runs jobs, and tests kill it
or change its environment), one with an option that changes files even in a dry run (--unlock,
--cleanup-metadata, ...), and one where the Snakefile's folder or the working directory holds a
`clipbench` package that is not the one imported here (a copy of the project with a new method in
it: in a subprocess the Snakefile imports the copy, here it would get this process's clipbench).
Output written straight to file descriptors 1 and 2 (a program Snakemake starts, e.g. conda during
a --use-conda dry run) is not captured in-process; Snakemake's own output all goes through Python.
"""

import contextlib
import importlib.util
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# Options after which Snakemake runs no job.
NO_JOB = {"-n", "--dry-run", "--dryrun", "--lint"}
# Options that change files or state even with -n: left to a subprocess.
CHANGES_STATE = {
    "--unlock",
    "--cleanup-metadata",
    "--cleanup-shadow",
    "--conda-cleanup-envs",
    "--conda-create-envs-only",
    "--container-cleanup-images",
    "--delete-all-output",
    "--delete-temp-output",
    "--touch",
    "-t",
    "--archive",
    "--edit-notebook",
    "--draft-notebook",
    "--report",
}


def snakemake(*args, cwd: Path | str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`snakemake ARGS` run in `cwd`: in this process when it runs no job (see the module's
    docstring), else `python -m snakemake ARGS` in a subprocess (timeout in seconds)."""
    argv = [str(arg) for arg in args]
    if runs_in_process(argv, cwd):
        return run_in_process(argv, cwd)
    return subprocess.run([*SNAKEMAKE, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def runs_in_process(argv: list[str], cwd: Path | str) -> bool:
    if not NO_JOB & set(argv) or CHANGES_STATE & set(argv):
        return False
    return same_clipbench(argv, cwd)


def same_clipbench(argv: list[str], cwd: Path | str) -> bool:
    """Whether the Snakefile would import this process's clipbench in a subprocess too: a
    `python -m snakemake` finds `clipbench` first in the Snakefile's folder (Snakemake puts it
    first on sys.path), then in its working directory (-m puts that there), then in the install.
    Only a folder that holds another clipbench package makes the two differ (the install is the
    one the tests run against)."""
    import clipbench

    loaded = Path(clipbench.__file__).resolve().parent
    cwd = Path(cwd).resolve()
    snakefile = None
    for option in ("-s", "--snakefile"):
        if option in argv and argv.index(option) + 1 < len(argv):
            snakefile = cwd / argv[argv.index(option) + 1]
    if snakefile is None:  # Snakemake's default locations, from the working directory
        candidates = ("Snakefile", "snakefile", "workflow/Snakefile", "workflow/snakefile")
        snakefile = next((cwd / c for c in candidates if (cwd / c).is_file()), cwd / "Snakefile")
    for folder in (snakefile.resolve().parent, cwd):
        package = folder / "clipbench"
        if (package / "__init__.py").is_file():
            return package.resolve() == loaded
    return True


def run_in_process(argv: list[str], cwd: Path | str) -> subprocess.CompletedProcess:
    """`snakemake.cli.main(argv)` in `cwd`, its output and exit status as a subprocess's."""
    from snakemake import cli

    returncode = 0
    with isolated(cwd, argv) as (stdout, stderr):
        try:
            cli.main(argv)
        except SystemExit as exit_:
            returncode = exit_code(exit_, stderr)
    # args names the entry point: a test can tell the two ways apart (a subprocess: SNAKEMAKE).
    return subprocess.CompletedProcess(
        ["snakemake.cli.main", *argv], returncode, stdout.getvalue(), stderr.getvalue()
    )


def exit_code(exit_: SystemExit, stderr: io.StringIO) -> int:
    """The status the interpreter would exit with (it prints a non-integer code to stderr)."""
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code
    print(exit_.code, file=stderr)
    return 1


@contextlib.contextmanager
def isolated(cwd: Path | str, argv: list[str] | None = None) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Snakemake in this process as in a fresh one: in `cwd`, sys.stdout and sys.stderr captured
    (yields the two buffers), and the process-wide state it changes restored afterwards."""
    from snakemake.logging import logger

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_cwd = os.getcwd()
    saved_path = list(sys.path)
    saved_environ = dict(os.environ)
    saved_argv = list(sys.argv)
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    saved_logger = (logger.level, logger.propagate)
    _drop_handlers(logger)
    # In a fresh process a message logged outside Snakemake's API (before it sets up its handlers,
    # or after it removed them) reaches Python's last-resort handler: stderr, the bare message.
    # Here the root logger has pytest's handlers, so the same is done by hand, and nothing goes on
    # to pytest's log capture (propagate off: in a fresh process the root logger has no handler).
    fallback = logging.StreamHandler(stderr)
    fallback.setLevel(logging.WARNING)
    logger.addHandler(fallback)
    logger.propagate = False
    try:
        os.chdir(cwd)
        # as `python -m snakemake` has it (the dry run's header shows it as the command)
        sys.argv = [importlib.util.find_spec("snakemake.__main__").origin, *(argv or [])]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            yield stdout, stderr
    finally:
        _drop_handlers(logger)
        logger.setLevel(saved_logger[0])
        logger.propagate = saved_logger[1]
        signal.signal(signal.SIGTERM, saved_sigterm)
        sys.argv = saved_argv
        if dict(os.environ) != saved_environ:
            os.environ.clear()
            os.environ.update(saved_environ)
        sys.path[:] = saved_path
        os.chdir(saved_cwd)


def _drop_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        with contextlib.suppress(Exception):
            handler.flush()
            handler.close()
