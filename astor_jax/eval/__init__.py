"""Evaluation: all tasks, the paper's ten metrics, results tables and plots."""
