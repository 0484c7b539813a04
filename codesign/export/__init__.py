"""Export Pareto members to verified ExecuTorch programs (see run.py)."""
