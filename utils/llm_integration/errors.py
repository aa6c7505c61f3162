"""Every error this layer raises; all derive from :class:`LLMError` (the CLI maps it to exit code 3)."""

from __future__ import annotations


class LLMError(Exception):
    """Base of every error raised by this layer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelLoadError(LLMError):
    """The GGUF file could not be loaded."""


class OutputTruncatedError(LLMError):
    """Generation hit ``max_tokens`` before the structured object was complete."""


class InvalidOutputError(LLMError):
    """The reply is not valid for its schema (for example a value out of range)."""


class DeadlineExceededError(LLMError):
    """Generation was stopped because the call's deadline passed."""

    def __init__(self, message: str, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class GenerationCancelledError(LLMError):
    """Generation was stopped by its cancellation event."""


class ProviderNotAllowedError(LLMError):
    """A config names a provider outside the allowlist (it would import arbitrary code)."""


class ContextOverflowError(LLMError):
    """Neither model's context holds the prompt plus the reply."""
