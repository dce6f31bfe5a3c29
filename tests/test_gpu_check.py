"""speed/gpu_check.py, the GPU check the scale issue asks for, runs end to end: here on a CPU with a
tiny shape (the GPU machines it is meant for have no vLLM and no hub; this keeps it runnable)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_a_tiny_shape():
    command = [sys.executable, "speed/gpu_check.py", "--tiny", "--device", "cpu", "--prompts", "2"]
    command += ["--samples", "4", "--prompt-tokens", "16", "--max-new-tokens", "16"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("qwen3, 336,256 parameters") and "dtype bfloat16" in lines[0]
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 2 and all("generation" in s and "update" in s and "MFU" in s for s in steps)
    assert lines[-1].startswith("clipbench plan predicts")
