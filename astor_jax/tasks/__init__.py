"""The four ASTOR code tasks: prompts, answer extraction, rewards and metrics."""
