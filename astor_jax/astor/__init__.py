"""The ASTOR algorithm, pure jnp: utility, schedule, calibration, advantages, losses."""
