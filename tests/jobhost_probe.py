"""A job for tests/test_jobhost.py, run as `python -m jobhost_probe ACTION [ARG]` (tests/ on PYTHONPATH):
pins the CPU kernels and asks the job host first, as `python -m clipbench.cli` does, then does ACTION and prints what it saw.

    report          print pid, cwd, argv, stdin and whether a host's child runs it (JSON); exit 0
    exit N          the same, then exit with code N
    raise           raise ValueError (a traceback on stderr, exit 1)
    sleep FILE      write this process's pid to FILE, then sleep (for the signal tests)
"""

import json
import os
import sys
import time

from clipbench import cpu_kernels, jobhost

if __name__ == "__main__":
    cpu_kernels.pin()
    hosted = jobhost.delegate("jobhost_probe")
    if hosted is not None:
        jobhost.exit_like(hosted)
    action = sys.argv[1]
    if action == "sleep":
        with open(sys.argv[2], "w") as pid_file:
            pid_file.write(str(os.getpid()))
        time.sleep(120)
    if action == "raise":
        raise ValueError("the probe's own error")
    seen = {
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "argv": sys.argv[1:],
        "argv0": os.path.basename(sys.argv[0]),
        "stdin": sys.stdin.read(),
        "hosted": os.environ.get(jobhost.CHILD_VAR) == "1",
        "shlvl": os.environ.get("SHLVL"),
    }
    print(json.dumps(seen))
    print("the probe's stderr", file=sys.stderr)
    sys.exit(int(sys.argv[2]) if action == "exit" else 0)
