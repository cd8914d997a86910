"""Errors of the vLLM backend. Messages name the bad value and the fix."""

from __future__ import annotations

from serving.errors import ServingError


class VLLMError(ServingError):
    """Root of the vLLM backend's errors."""


class VLLMNotInstalled(VLLMError):
    """The chosen Python cannot run, or has no vLLM; the message names that Python and the fix."""


class VLLMStartupFailed(VLLMError):
    """vLLM's server exited or timed out before it answered; carries the end of its output."""

    def __init__(self, message: str, *, log_tail: tuple[str, ...], returncode: int | None) -> None:
        lines = "\n".join(f"  | {line}" for line in log_tail) or "  | (no output)"
        super().__init__(f"{message}\nLast {len(log_tail)} lines of vLLM's output:\n{lines}")
        self.log_tail = log_tail
        """The server's last output lines, oldest first."""
        self.returncode = returncode
        """Its exit status (negative: killed by that signal); None if it was still running."""


class AttentionBackendConflict(VLLMError):
    """An attention backend name is already bound to another class and replacing was not asked."""
