"""astor_jax: ASTOR (schedule-and-calibrate multi-task RL for code LLMs) in JAX/Flax.

Layers, top to bottom (imports point downwards only):
  main, reproduce, launch_check -> train -> astor, rollout -> model
  tasks -> execution;  data;  eval
See docs/design.md.
"""

__version__ = "0.1.0"
