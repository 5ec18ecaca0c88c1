"""Evaluation: generation on test prompts, judges, win rates with bootstrap intervals."""
