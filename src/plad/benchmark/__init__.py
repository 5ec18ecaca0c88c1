"""The built-in offline benchmark: small generated tasks with graded scorers, and the tiny models the demo builds."""
