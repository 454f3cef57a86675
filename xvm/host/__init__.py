"""Hosts: where domains live.  :func:`connect` opens one by URI.

* ``xvm:///session`` (the default, or ``$XVM_URI``): the *embedded* host — no daemon;
  this process keeps the state directory's store (``$XVM_STATE_DIR``) and starts one
  VMM process per running domain.
* ``xvm:///system``: the ``xvmd`` service on its default socket.
* ``xvm+unix:///path/to/xvmd.sock``: an ``xvmd`` on that socket.

The same :class:`~xvm.domain.Domain` API works over every URI.
"""
import os
import urllib.parse

from ..errors import ConfigError
from .capabilities import Capabilities
from .local import Host, LocalHost

SESSION_URI = "xvm:///session"
SYSTEM_URI = "xvm:///system"
SYSTEM_SOCKET = "/run/xvm/xvmd.sock"


def connect(uri=None, *, in_process=False, state_dir=None):
    """Open a host; returns a :class:`Host`.

    ``uri``: see the module docstring (None: ``$XVM_URI``, else ``xvm:///session``).
    ``in_process=True`` (embedded host only) runs each domain's VMM inside this
    process instead of a process of its own: for debugging and notebooks; such
    domains end with the host.  ``state_dir`` overrides ``$XVM_STATE_DIR``.
    """
    uri = uri or os.environ.get("XVM_URI") or SESSION_URI
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "xvm" and parsed.path == "/session" and not parsed.netloc:
        return LocalHost(state_dir, in_process=in_process, uri=uri)
    if in_process:
        raise ConfigError(f"in_process=True needs the embedded host ({SESSION_URI}), not {uri}")
    if parsed.scheme == "xvm" and parsed.path == "/system" and not parsed.netloc:
        from .remote import RemoteHost
        return RemoteHost(SYSTEM_SOCKET, uri=uri)
    if parsed.scheme == "xvm+unix" and not parsed.netloc and parsed.path:
        from .remote import RemoteHost
        return RemoteHost(parsed.path, uri=uri)
    raise ConfigError(f"unknown host URI {uri!r}: use {SESSION_URI}, {SYSTEM_URI} or "
                      "xvm+unix:///path/to/xvmd.sock")


__all__ = ["Capabilities", "Host", "LocalHost", "SESSION_URI", "SYSTEM_URI", "connect"]
