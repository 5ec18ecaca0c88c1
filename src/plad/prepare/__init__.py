"""Real-model preparation: `plad prepare` (teacher from a GGUF wheel, Debian data, a pruned and healed student) and
`plad prune`."""
