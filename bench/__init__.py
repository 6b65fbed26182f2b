"""Benchmarks (not tests): ours vs peers, measured side by side in one run."""

import argparse


def add_cpu_buffers_flag(ap: argparse.ArgumentParser) -> None:
  """`--fresh-cpu-buffers`: run without `config.cpu_resident_buffers` (an A/B switch)."""
  ap.add_argument("--fresh-cpu-buffers", action="store_true",
                  help="run as the job does with config.cpu_resident_buffers=false "
                  "(XLA:CPU maps each call's temporaries afresh)")


def start_process(args: argparse.Namespace) -> str:
  """Sets the process up as `astor_jax.main` does, before JAX starts; the note it logs."""
  from astor_jax import cpu_buffers

  return cpu_buffers.keep_resident(not args.fresh_cpu_buffers)
