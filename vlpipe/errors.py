"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class VlpipeError(Exception):
    """A problem the user can fix (bad path, bad flag, unknown model); never a bug."""

    def _render_traceback_(self) -> list[str]:
        """IPython/Jupyter show this instead of a traceback: the same one line as the CLI."""
        return [f"VlpipeError: {self}"]


class ModelLoadError(VlpipeError):
    """A model name or directory that cannot be loaded."""


class ReasonError(Exception):
    """An error with a short stable `reason` code (for counting) and a one-line message."""

    def __init__(self, reason: str, message: str):
        super().__init__(" ".join(message.split()))
        self.reason = reason
