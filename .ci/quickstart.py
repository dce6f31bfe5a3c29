"""Print the README's quick-start commands, one per line, exactly as written there.

The quick start is the one fenced ```bash block between the markers
``<!-- quickstart -->`` and ``<!-- /quickstart -->`` in README.md: two commands, the main job
(the default study) and the test command. `.ci/run` executes what this prints, verbatim and
before anything else is installed, so CI cannot drift from what a new user types.

Usage: python .ci/quickstart.py [README.md]. Exits 1 with a message naming the problem when the
markers, the block or the two commands are missing. Standard library only: it runs before any
install.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

BEGIN, END = "<!-- quickstart -->", "<!-- /quickstart -->"
MAIN_JOB = "snakemake --cores all"
TEST_COMMAND = "python -m pytest"


def quickstart_commands(readme: str) -> list[str]:
    """The commands of the marked block, one per non-blank line (comments kept: bash ignores them)."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError(f"README.md must hold exactly one {BEGIN} ... {END} section")
    section = readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)]
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, re.S | re.M)
    if len(blocks) != 1:
        raise ValueError(f"the quick-start section must hold exactly one ```bash block, found {len(blocks)}")
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    if len(commands) != 2:
        raise ValueError(
            f"the quick-start block must hold two commands (main job, tests), found {len(commands)}"
        )
    main_job, tests = commands
    if MAIN_JOB not in main_job or TEST_COMMAND not in tests:
        raise ValueError(f"the quick start must run `{MAIN_JOB}` first and `{TEST_COMMAND}` second")
    return commands


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "README.md")
    try:
        commands = quickstart_commands(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    print("\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
