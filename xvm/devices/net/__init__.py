"""virtio-net: the network device of the split-driver model (virtio 1.2 §5.1).

``VirtioNet`` is the device, carried by any virtio transport; its frames go
to a backend (``backend.Tap``).  Host networks (bridges) live in ``xvm.net``.
"""
from .backend.tap import Tap
from .device import VIRTIO_ID_NET, VirtioNet, format_mac, parse_mac
from .errors import NetConfigError, TapError
from .metrics import NetMetrics
from .persist import NetState

__all__ = ["VirtioNet", "VIRTIO_ID_NET", "Tap", "NetConfigError", "TapError", "NetMetrics",
           "NetState", "format_mac", "parse_mac"]
