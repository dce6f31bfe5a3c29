"""The README stays short and honest, and the docs' links resolve.

- README.md is at most 120 lines: reference material lives in docs/, one page per topic.
- Every relative link in README.md and docs/**/*.md points to a file (or folder) that exists.
- Every command the README shows is run by CI or by a test: the quick-start lines are run verbatim
  by `.ci/run` (tests/test_ci.py holds that); every other command in a ```bash block, or in inline
  code starting with `clipbench`, `snakemake` or `python -m`, must be in RUN_HERE (this file runs it)
  or in RUN_ELSEWHERE (the CI script or test that runs it). A command missing from both fails with
  a message saying what to do; so does an entry the README no longer shows.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
MAX_README_LINES = 120

SPEC = importlib.util.spec_from_file_location("ci_quickstart", ROOT / ".ci" / "quickstart.py")
quickstart = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(quickstart)

# Commands this file runs itself: command -> (where it runs: "root" or "tmp", files it must leave
# there). The README's exact text, trailing `# comment` removed.
RUN_HERE = {
    "python -m venv .venv && . .venv/bin/activate": ("tmp", [".venv/bin/python"]),
    "clipbench --help": ("root", []),
    "clipbench methods": ("root", []),
    "snakemake -n": ("root", []),
    "clipbench plan workflows/config/paper.yaml": ("root", []),
}
# The slow ones: run by `python -m pytest -m slow`, as CI does (none today: CI's time is short).
SLOW: set[str] = set()

# Commands run elsewhere: command -> ".ci/run" (which must hold it verbatim) or
# "tests/FILE.py::test_name" (which must exist).
RUN_ELSEWHERE = {
    'python -m pytest -m "slow and dag" -n 2 && python -m pytest -m "slow and not dag" -n 0': ".ci/run",
    "snakemake -n --cores 8 --configfile workflows/config/paper_trl.yaml": (
        "tests/test_workflow.py::test_the_paper_trl_study_trains_every_run_through_accelerate_on_8_gpus"
    ),
    "snakemake -n --profile profiles/slurm --configfile workflows/config/paper_verl.yaml": (
        "tests/test_workflow.py::test_paper_verl_dry_runs_through_the_slurm_profile"
    ),
}

INLINE_COMMAND = re.compile(r"^(clipbench|snakemake)(\s|$)|^python3? -m\s")


def _without_comment(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line).strip()


def readme_commands(text: str) -> tuple[list[str], list[str]]:
    """(the quick-start lines, every other command the README shows, comments stripped)."""
    quick = quickstart.quickstart_commands(text)
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```$", text, re.S | re.M):
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            if not line.strip() or line.lstrip().startswith("#") or line in quick:
                continue
            commands.append(_without_comment(line))
    prose = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
    for code in re.findall(r"`([^`\n]+)`", prose):
        if INLINE_COMMAND.match(code.strip()):
            commands.append(code.strip())
    return quick, commands


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.S | re.M)  # no links in code
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def test_the_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move reference material to docs/"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"


def test_the_link_check_sees_links():
    links = _links(README)
    assert "docs/methods.md" in links and "docs/default_study/clip_by_length.png" in links


def test_every_readme_command_is_run_by_ci_or_a_test():
    _, commands = readme_commands(README.read_text())
    unmapped = [c for c in commands if c not in RUN_HERE and c not in RUN_ELSEWHERE]
    assert not unmapped, (
        f"README.md shows commands that neither CI nor a test runs: {unmapped}. Add each to RUN_HERE "
        "in tests/test_docs.py (if it is cheap enough to run there) or to RUN_ELSEWHERE naming the "
        "test or CI script that runs it, or take it out of the README."
    )
    stale = sorted((set(RUN_HERE) | set(RUN_ELSEWHERE)) - set(commands))
    assert not stale, f"tests/test_docs.py maps commands the README no longer shows: {stale}; remove them"


def test_the_quick_start_is_what_ci_runs():
    quick, _ = readme_commands(README.read_text())
    assert ".ci/quickstart.py README.md" in (ROOT / ".ci" / "run").read_text()
    assert [c.split("&&", 1)[1].split("#")[0].strip() for c in quick] == [
        "snakemake --cores all",
        "python -m pytest",
    ]


@pytest.mark.parametrize(("command", "where"), sorted(RUN_ELSEWHERE.items()))
def test_commands_run_elsewhere_are_really_there(command, where):
    if where == ".ci/run":
        assert command in (ROOT / ".ci" / "run").read_text(), f".ci/run does not run {command!r}"
    else:
        file, name = where.split("::")
        assert f"def {name}(" in (ROOT / file).read_text(), f"{where} does not exist"


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(RUN_HERE)],
)
def test_readme_command_runs(command, tmp_path):
    where, leaves = RUN_HERE[command]
    cwd = ROOT if where == "root" else tmp_path
    bindir = str(Path(sys.executable).parent)  # `clipbench`, `snakemake`, `python` of this environment
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{command}: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    )
    for file in leaves:
        assert (cwd / file).is_file(), f"{command} left no {file}"


def test_a_command_in_a_bash_block_is_found():
    text = README.read_text() + "\n```bash\nclipbench frobnicate --all   # new\n```\n"
    _, commands = readme_commands(text)
    assert "clipbench frobnicate --all" in commands
