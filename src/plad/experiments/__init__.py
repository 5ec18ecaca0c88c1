"""The stage cache and orchestration: `plad run`, `plad bench`, `plad sweep`."""
