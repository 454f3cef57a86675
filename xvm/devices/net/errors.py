"""Errors of the network device."""
from ...errors import ConfigError, HostError


class NetConfigError(ConfigError):
    """A NIC cannot be set up as asked (bad MAC, missing bridge...)."""


class TapError(HostError):
    """A TAP device could not be created or used; ``errno`` says why."""
