"""The HTTP client for OpenAI-compatible endpoints: retries, timeouts, cost accounting."""
