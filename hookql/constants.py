"""Named constants: kernel enums from BTF (IPPROTO_*, SOCK_*, TCP states...)
and the #define'd families and errnos BTF cannot carry (AF_*, E*)."""
from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from hookql import types as T

# include/linux/socket.h: stable ABI, not in BTF (#defines)
ADDRESS_FAMILIES = {
    "AF_UNSPEC": 0, "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_AX25": 3, "AF_IPX": 4,
    "AF_APPLETALK": 5, "AF_NETROM": 6, "AF_BRIDGE": 7, "AF_ATMPVC": 8, "AF_X25": 9, "AF_INET6": 10,
    "AF_ROSE": 11, "AF_DECnet": 12, "AF_NETBEUI": 13, "AF_SECURITY": 14, "AF_KEY": 15, "AF_NETLINK": 16,
    "AF_ROUTE": 16, "AF_PACKET": 17, "AF_ASH": 18, "AF_ECONET": 19, "AF_ATMSVC": 20, "AF_RDS": 21,
    "AF_SNA": 22, "AF_IRDA": 23, "AF_PPPOX": 24, "AF_WANPIPE": 25, "AF_LLC": 26, "AF_IB": 27,
    "AF_MPLS": 28, "AF_CAN": 29, "AF_TIPC": 30, "AF_BLUETOOTH": 31, "AF_IUCV": 32, "AF_RXRPC": 33,
    "AF_ISDN": 34, "AF_PHONET": 35, "AF_IEEE802154": 36, "AF_CAIF": 37, "AF_ALG": 38, "AF_NFC": 39,
    "AF_VSOCK": 40, "AF_KCM": 41, "AF_QIPCRTR": 42, "AF_SMC": 43, "AF_XDP": 44, "AF_MCTP": 45,
}
# include/uapi/asm-generic/socket.h and linux/socket.h (x86-64 and arm64 use these values)
SOCKET_OPTIONS = {
    "SOL_SOCKET": 1, "SOL_IP": 0, "SOL_TCP": 6, "SOL_UDP": 17, "SOL_IPV6": 41,
    "SO_DEBUG": 1, "SO_REUSEADDR": 2, "SO_TYPE": 3, "SO_ERROR": 4, "SO_DONTROUTE": 5, "SO_BROADCAST": 6,
    "SO_SNDBUF": 7, "SO_RCVBUF": 8, "SO_KEEPALIVE": 9, "SO_OOBINLINE": 10, "SO_NO_CHECK": 11,
    "SO_PRIORITY": 12, "SO_LINGER": 13, "SO_BSDCOMPAT": 14, "SO_REUSEPORT": 15, "SO_PASSCRED": 16,
    "SO_PEERCRED": 17, "SO_RCVLOWAT": 18, "SO_SNDLOWAT": 19, "SO_BINDTODEVICE": 25, "SO_ATTACH_FILTER": 26,
    "SO_PEERNAME": 28, "SO_ACCEPTCONN": 30, "SO_PEERSEC": 31, "SO_SNDBUFFORCE": 32, "SO_RCVBUFFORCE": 33,
    "SO_PASSSEC": 34, "SO_MARK": 36, "SO_PROTOCOL": 38, "SO_DOMAIN": 39, "SO_BUSY_POLL": 46,
    "SO_INCOMING_CPU": 49, "SO_COOKIE": 57, "SO_PEERGROUPS": 59, "SO_ZEROCOPY": 60, "SO_BINDTOIFINDEX": 62,
}
# Linux errno values, as Python (on Linux) knows them.
ERRNOS = {name: value for value, name in _errno.errorcode.items()}
ERRNOS.update({n: getattr(_errno, n) for n in dir(_errno) if n.startswith("E") and isinstance(getattr(_errno, n), int)})

_PREFIX_DISPLAY = (("AF_", T.AF), ("IPPROTO_", T.PROTO), ("SOCK_", T.SOCK_TYPE), ("TCP_", T.TCP_STATE))


@dataclass(frozen=True)
class Constant:
    name: str
    value: int
    origin: str  # "linux/socket.h", "errno", "enum sock_type", ...

    @property
    def ty(self) -> T.Type:
        if self.origin == "errno":
            return T.INT(32, True, T.ERRNO, "errno")
        for prefix, display in _PREFIX_DISPLAY:
            if self.name.startswith(prefix):
                return T.INT(64, True, display, self.origin)
        return T.INT(64, True, cname=self.origin)


def lookup(name: str, btf) -> Constant | None:
    """A constant by name; BTF enums are scanned only for names the fixed
    tables do not know."""
    if name in ADDRESS_FAMILIES:
        return Constant(name, ADDRESS_FAMILIES[name], "linux/socket.h")
    if name in ERRNOS:
        return Constant(name, ERRNOS[name], "errno")
    if name in SOCKET_OPTIONS:
        return Constant(name, SOCKET_OPTIONS[name], "asm-generic/socket.h")
    if not name[:1].isupper():
        return None
    hit = btf.enumerators().get(name)
    if hit is None:
        return None
    value, enum = hit
    return Constant(name, value, f"enum {enum}" if enum else "kernel enum")


def names_like(prefix: str, btf) -> list[str]:
    """Constant names starting with prefix (for suggestions and completion)."""
    out = [n for n in ADDRESS_FAMILIES if n.startswith(prefix)]
    out += [n for n in ERRNOS if n.startswith(prefix)]
    out += [n for n in SOCKET_OPTIONS if n.startswith(prefix)]
    out += [n for n in btf.enumerators() if n.startswith(prefix)]
    return sorted(set(out))
