"""The one error type the engine shows to people."""


class EngineError(ValueError):
    """Bad input or an unavailable resource; its message is one sentence that says what to change."""
