"""Errors of host networking."""
from ..errors import ConfigError, HostError, NotFoundError  # noqa: F401  (re-exported)


class NetworkConfigError(ConfigError):
    """A network or NIC is configured wrongly (bad name, address, MAC...)."""


class NetworkHostError(HostError):
    """A netlink request on the host failed; ``errno`` says why."""


def _register():
    from ..vmm.protocol import register_error  # xvmd's replies recreate these classes

    register_error(NetworkConfigError)
    register_error(NetworkHostError)


_register()
