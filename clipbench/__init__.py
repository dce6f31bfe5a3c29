"""clipbench: the engine of the suite (fairness metrics, simulation, provenance, CLI; later models,
rollouts, trainer and reports). The clipping rules live in the sibling package `methods`, the
evaluation sets and the verifier in `benchmarks`."""

__version__ = "0.1.0"
