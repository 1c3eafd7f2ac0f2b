"""The exception hierarchy every layer maps its backend errors into.

A ``ProviderError`` means "skip this unit (account, region, project) this cycle", never "act":
the instances it would have described are reported ``unmeasured`` and nothing is stopped.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "GuardianError",
    "MetricsUnavailable",
    "NvmlUnavailable",
    "ProviderError",
    "StateUnavailable",
    "Throttled",
    "Unavailable",
]


class GuardianError(Exception):
    """Base class: every error we raise on purpose. The CLI prints these as one line."""


class ConfigError(GuardianError):
    """The configuration file or an override is invalid; the message names the key."""


class ProviderError(GuardianError):
    """A cloud API call failed; the unit it concerned is skipped this cycle."""

    def __init__(self, message: str, *, provider: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.provider = provider
        self.operation = operation


class AuthError(ProviderError):
    """Credentials are missing, expired or lack a permission."""


class Throttled(ProviderError):
    """The API asked us to slow down, even after the SDK's own retries."""


class Unavailable(ProviderError):
    """The endpoint could not be reached or answered with a server error."""


class MetricsUnavailable(ProviderError):
    """Metrics could not be read; affected instances are ``unmeasured``."""


class StateUnavailable(GuardianError):
    """The state database refuses writes (read-only, full, unreachable). Nothing that must be
    recorded first (a warning, a stop) may happen until it accepts them again."""


class NvmlUnavailable(GuardianError):
    """NVML (the NVIDIA driver library) cannot be used on this machine."""
