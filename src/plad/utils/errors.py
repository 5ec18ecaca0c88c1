"""The errors plad reports to users as one `plad CMD: error:` line (the CLI catches them; no traceback)."""


class ConfigError(ValueError):
    """A configuration the user must change; the message names the key and what to do."""


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the field."""


class ModelError(ValueError):
    """A model or tokenizer that cannot be used; the message names the folder and the fix."""


class RemoteError(RuntimeError):
    """A service outside plad (the Hugging Face Hub) could not be reached or refused the request: nothing of plad's
    is wrong, and the same command can be run again (the CLI exits with 3)."""
