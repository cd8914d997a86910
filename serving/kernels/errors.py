"""Errors of the long-context attention kernels."""

from __future__ import annotations

from serving.errors import ServingError


class KernelError(ServingError):
    """Root of the kernel errors."""


class AttentionSettingsError(KernelError):
    """Long-context attention settings that cannot work together (a budget smaller than the
    static set, an unknown block partition); the message names the value and the fix."""
