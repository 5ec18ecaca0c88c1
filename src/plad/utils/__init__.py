"""Small shared utilities: logging format, signal handling, folder locks."""
