"""The training loop (resume, accumulation, checkpoints) and the `plad sft` / `plad distill` stages."""
