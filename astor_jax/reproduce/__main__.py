"""`python -m astor_jax.reproduce`: see astor_jax/reproduce/__init__.py."""

from astor_jax.reproduce.cli import run

if __name__ == "__main__":
  run()
