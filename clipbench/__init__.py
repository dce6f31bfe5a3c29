"""clipbench: the engine of the suite (models, sampling, the RL trainer, evaluation, fairness
metrics, simulation, reports and plots, the study's files and the CLI). The clipping rules live in
the sibling package `methods`, the evaluation sets and the verifier in `benchmarks`."""

__version__ = "0.1.0"
