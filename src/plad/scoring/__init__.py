"""Scoring text: ROUGE-L and exact match, and the built-in tasks' graded scorers (plad-margin scores, rounds, eval)."""
