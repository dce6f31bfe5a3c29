"""Training backends other than clipbench's own trainer, each optional.

* `clipbench.integrations.trl`: any registered clipping rule as the loss of TRL's GRPOTrainer
  (`pip install -e ".[trl]"`); it imports trl only when a trainer is built, so this package
  and the rest of clipbench import without it.
"""
