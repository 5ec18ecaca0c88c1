"""Tensor code: the losses (pure functions), sequence log-probs, the methods table, and model loading."""
