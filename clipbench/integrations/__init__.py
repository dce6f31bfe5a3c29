"""Training backends other than clipbench's own trainer, each optional.

* `clipbench.integrations.trl`: any registered clipping rule as the loss of TRL's GRPOTrainer
  (`pip install -e ".[trl]"`); it imports trl only when a trainer is built, so this package
  and the rest of clipbench import without it.
* `clipbench.integrations.verl`: every registered rule as a policy loss of verl 0.9.1
  (`clipbench_<name>` in its registry), with its clip records written from verl's workers;
  `verl_plugin` (what verl's workers import to register them), `verl_reward` (verl's reward
  function: the verifier) and `verl_config` (`clipbench verl-config`: a study run's verl config
  and data). verl is imported only by `register_all`, in verl's own venv (verl 0.9.1 pins
  transformers below clipbench's: docs/training.md, "Training inside verl").
"""
