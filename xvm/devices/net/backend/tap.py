"""A TAP device as a virtio-net backend (<linux/if_tun.h>).

``Tap.open()`` creates a non-persistent TAP (IFF_TAP | IFF_NO_PI |
IFF_VNET_HDR) through /dev/net/tun, nonblocking.  Every frame read or written
carries a 12-byte ``struct virtio_net_hdr_v1`` in front (TUNSETVNETHDRSZ), so
checksum and segmentation offloads pass between guest and host untouched.
The kernel removes the interface when its last fd is closed: closing the
Tap, or the VMM dying, leaves nothing behind (TUNSETPERSIST is never used).

``Tap.open_queues(name, n)`` creates a multi-queue TAP (IFF_MULTI_QUEUE): n
fds on one interface, one per virtio-net queue pair; the kernel steers each
flow's frames to the queue that last sent that flow.  A queue is taken out of
the steering and put back with TUNSETQUEUE (:meth:`Tap.set_queue_attached`),
which needs no privilege.
"""
import errno as _errno
import fcntl
import os
import struct

from ..errors import TapError

TUN_PATH = "/dev/net/tun"
# <linux/if_tun.h>: _IOW('T', 202, int) etc.
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNSETPERSIST = 0x400454CB
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
TUNSETQUEUE = 0x400454D9
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# TUNSETOFFLOAD flags: what the reader of the TAP (the guest) can take.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10

IFNAMSIZ = 16
VNET_HDR_SIZE = 12  # struct virtio_net_hdr_v1 (num_buffers included)
_IFREQ = struct.Struct("16sH22x")
DEFAULT_NAME = "xvmtap%d"


class Tap:
    """An open TAP device: ``fd``, ``name``, ``ifindex``, ``offloads`` (the
    TUN_F_* flags the host kernel accepted when probed)."""

    vnet_hdr_size = VNET_HDR_SIZE

    def __init__(self, fd, name):
        self.fd = fd
        self.name = name
        self.offloads = 0

    @classmethod
    def can_create(cls):
        """Whether this process may create TAP devices (CAP_NET_ADMIN and /dev/net/tun):
        one is created and closed to find out."""
        try:
            cls.open("xvmprobe%d").close()
            return True
        except TapError:
            return False

    @classmethod
    def open(cls, name=DEFAULT_NAME):
        """Create a TAP named ``name`` (``%d`` lets the kernel number it).

        Raises :class:`TapError`: EPERM without CAP_NET_ADMIN, ENOENT without
        /dev/net/tun, EBUSY when ``name`` is in use by another TAP.
        """
        return cls._open(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)

    @classmethod
    def open_queues(cls, name=DEFAULT_NAME, queues=2):
        """Create a multi-queue TAP named ``name`` with ``queues`` queues: a list of
        Taps, one per queue, all of one interface (it goes when the last closes)."""
        if not isinstance(queues, int) or queues < 1:
            raise TapError(f"a TAP needs at least one queue, not {queues!r}", _errno.EINVAL)
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
        taps = [cls._open(name, flags)]
        try:
            while len(taps) < queues:
                taps.append(cls._open(taps[0].name, flags))
        except BaseException:
            for tap in taps:
                tap.close()
            raise
        return taps

    @classmethod
    def _open(cls, name, flags):
        if len(name.encode()) >= IFNAMSIZ:
            raise TapError(f"TAP name {name!r} is longer than {IFNAMSIZ - 1} bytes",
                           _errno.EINVAL)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TapError(f"cannot open {TUN_PATH}: {e.strerror}", e.errno) from None
        try:
            req = _IFREQ.pack(name.encode(), flags)
            try:
                out = fcntl.ioctl(fd, TUNSETIFF, req)
            except OSError as e:
                if e.errno == _errno.EPERM:
                    raise TapError(f"creating TAP {name!r} needs CAP_NET_ADMIN "
                                   f"(TUNSETIFF: {e.strerror})", e.errno) from None
                raise TapError(f"TUNSETIFF {name!r} failed: {e.strerror}", e.errno) from None
            actual = _IFREQ.unpack(out)[0].rstrip(b"\0").decode()
            tap = cls(fd, actual)
            tap._ioctl_int(TUNSETVNETHDRSZ, VNET_HDR_SIZE, "TUNSETVNETHDRSZ")
            tap.offloads = tap._probe_offloads()
            return tap
        except BaseException:
            os.close(fd)
            raise

    def _ioctl_int(self, request, value, what):
        try:
            fcntl.ioctl(self.fd, request, struct.pack("i", value))
        except OSError as e:
            raise TapError(f"{what} on TAP {self.name!r} failed: {e.strerror}", e.errno) from None

    def _probe_offloads(self):
        """The TUN_F_* flags this kernel accepts, tried from the largest set
        down; the TAP is left with no offloads enabled."""
        accepted = 0
        for flags in (TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN):
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, accepted | flags)
                accepted |= flags
            except OSError:
                pass
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        except OSError:
            pass
        return accepted

    def set_queue_attached(self, attached):
        """Put this queue of a multi-queue TAP into the kernel's steering, or take
        it out (TUNSETQUEUE): a detached queue gets no frames and sends none."""
        flag = IFF_ATTACH_QUEUE if attached else IFF_DETACH_QUEUE
        try:
            fcntl.ioctl(self.fd, TUNSETQUEUE, _IFREQ.pack(b"", flag))
        except OSError as e:
            what = "attach" if attached else "detach"
            raise TapError(f"TUNSETQUEUE ({what}) on TAP {self.name!r} failed: {e.strerror}",
                           e.errno) from None

    def set_offload(self, flags):
        """Tell the kernel which offloaded frames the guest can receive."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as e:
            raise TapError(f"TUNSETOFFLOAD {flags:#x} on TAP {self.name!r} failed: "
                           f"{e.strerror}", e.errno) from None

    @property
    def ifindex(self):
        return socket_ifindex(self.name)

    def fileno(self):
        return self.fd

    @property
    def frame_fd(self):
        """The fd on which one writev sends one frame (the C transmit path's)."""
        return self.fd

    def read_into(self, buffer):
        """One frame (vnet header first) into ``buffer``; its length, or None
        when no frame is waiting."""
        try:
            return os.readv(self.fd, [buffer])
        except BlockingIOError:
            return None

    def writev(self, views):
        """Send one frame given as buffers (vnet header first)."""
        return os.writev(self.fd, views)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def socket_ifindex(name):
    import socket
    try:
        return socket.if_nametoindex(name)
    except OSError as e:
        raise TapError(f"no network interface {name!r}", e.errno or _errno.ENODEV) from None
