"""plad: preference-based distillation of large language models (PLaD, DPKD and their baselines)."""

__version__ = "0.1.0"
