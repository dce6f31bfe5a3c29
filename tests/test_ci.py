"""CI runs the README's quick start verbatim, first: the extractor and the order in `.ci/run`.

A green CI once hid a broken first contact (CI installed extras the README did not name). These
tests fail if the README's quick-start block loses its markers or its shape, or if `.ci/run`
installs anything before running that block.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("ci_quickstart", ROOT / ".ci" / "quickstart.py")
quickstart = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(quickstart)

BLOCK = "<!-- quickstart -->\n```bash\n{}\n```\n<!-- /quickstart -->\n"
GOOD = (
    'pip install -e ".[dev]" && snakemake --cores all   # main\npip install -e ".[dev]" && python -m pytest'
)


def test_the_readme_quick_start_is_two_commands_main_job_then_tests():
    commands = quickstart.quickstart_commands((ROOT / "README.md").read_text())
    assert len(commands) == 2
    main_job, tests = commands
    assert main_job.startswith("pip install ") and "&& snakemake --cores all" in main_job
    assert tests.startswith("pip install ") and "&& python -m pytest" in tests
    # Both commands install the same thing: the test command must not need more than the main job.
    assert main_job.split("&&")[0].strip() == tests.split("&&")[0].strip()


def test_the_extractor_returns_the_lines_verbatim():
    readme = "# x\n\n```bash\nnot this\n```\n" + BLOCK.format(GOOD) + "\n```bash\nnor this\n```\n"
    assert quickstart.quickstart_commands(readme) == GOOD.splitlines()


@pytest.mark.parametrize(
    ("readme", "message"),
    [
        ("```bash\n" + GOOD + "\n```\n", "exactly one <!-- quickstart -->"),
        (BLOCK.format(GOOD) + BLOCK.format(GOOD), "exactly one <!-- quickstart -->"),
        ("<!-- quickstart -->\n" + GOOD + "\n<!-- /quickstart -->\n", "exactly one ```bash block, found 0"),
        (BLOCK.format(GOOD + "\necho three"), "two commands .*found 3"),
        (BLOCK.format("python -m pytest\nsnakemake --cores all"), "`snakemake --cores all` first"),
    ],
)
def test_a_broken_quick_start_block_is_an_error_naming_the_problem(readme, message):
    with pytest.raises(ValueError, match=message):
        quickstart.quickstart_commands(readme)


def test_the_extractor_script_fails_loudly(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "quickstart.py"), str(readme)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "README.md: README.md must hold exactly one" in result.stderr
    assert result.stdout == ""


def _code_lines(path: Path) -> list[str]:
    return [
        line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def test_ci_runs_the_quick_start_first_in_a_fresh_venv_before_any_install():
    lines = _code_lines(ROOT / ".ci" / "run")
    at = next(i for i, line in enumerate(lines) if ".ci/quickstart.py README.md" in line)
    before = lines[:at]
    assert any(re.search(r"python3? -m venv ", line) for line in before), (
        "no fresh venv before the quick start"
    )
    assert any("PATH=" in line and "venv/bin" in line for line in before), "the fresh venv is not activated"
    installs = [line for line in before if re.search(r"\bpip\b|pip_install|uv ", line)]
    assert not installs, f".ci/run installs before the quick start: {installs}"
    # The extracted commands are executed as written, and the venv is not one with system packages.
    after = "\n".join(lines[at : at + 6])
    assert 'bash -euo pipefail -c "$command"' in after
    assert "--system-site-packages" not in "\n".join(lines)
