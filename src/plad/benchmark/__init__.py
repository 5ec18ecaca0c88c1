"""Built-in offline benchmark: small generated tasks with graded scorers, learnable by tiny models on CPU."""
