"""Imported by verl's workers to register every clipbench rule as a verl policy loss.

verl imports the modules named by `actor_rollout_ref.model.external_lib` in each worker process
(`verl.workers.config.HFModelConfig`), before its actor computes a loss; `clipbench verl-config`
names this one there. Importing it imports verl and calls
`clipbench.integrations.verl.register_all()` (the rules as `clipbench_<name>`).
"""

from clipbench.integrations.verl import register_all

REGISTERED = register_all()
