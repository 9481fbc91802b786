"""Parse gRPC target strings (gRPC naming.md forms) into addresses. No IO.

``host:port``, ``host``, ``dns:///host:port``, ``dns://authority/host:port``,
``dns:host:port``, ``ipv4:a:p[,a:p...]``, ``ipv6:[a]:p[,...]``, ``unix:/path``,
``unix:///path``, ``unix-abstract:name``. A unix socket path must be absolute: a relative
one would name a different socket in every working directory, so it is refused. Resolution
of DNS names happens later, in the IO layer.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

__all__ = ["Target", "format_host_port", "parse_bind_address", "parse_target"]


class Target(NamedTuple):
    """A parsed target: a unix path, or TCP ``(host, port)`` addresses to dial.

    A NamedTuple, not a dataclass: ``from wove_h2grpc import Channel`` imports this module,
    and importing dataclasses (inspect with it) would cost more than that whole import.
    """

    kind: str  # "tcp", "unix" or "unix-abstract"
    addresses: Tuple[Tuple[str, int], ...] = ()
    path: str = ""
    authority: str = ""
    needs_resolution: bool = False  # host names to resolve (vs. literal IPs)
    original: str = ""

    @property
    def host(self) -> str:
        """Host of the first address ('localhost' for unix sockets)."""
        return self.addresses[0][0] if self.addresses else "localhost"


def _ip_version(host: str) -> int:
    """4 or 6 for an IP address literal, 0 for anything else (a host name)."""
    import ipaddress  # here, not at the top: a target is parsed once per channel

    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def _is_ip(host: str) -> bool:
    return _ip_version(host) != 0


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit() alone also accepts '²' and fullwidth or other scripts' digits.
    return text.isascii() and text.isdigit()


def _check_port(text: str, target: str) -> int:
    if not _is_ascii_digits(text):
        raise ValueError(f"invalid port {text!r} in target {target!r}")
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535 in target {target!r}")
    return port


def _split_host_port(text: str, default_port: int, target: str) -> Tuple[str, int, bool]:
    """Split ``host[:port]`` / ``[v6][:port]``; returns (host, port, port_given)."""
    if not text:
        raise ValueError(f"missing host in target {target!r}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unclosed '[' in target {target!r}")
        host = text[1:close]
        rest = text[close + 1 :]
        if not _is_ip(host) or ":" not in host:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address in target {target!r}")
        if not rest:
            return host, default_port, False
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in target {target!r}")
        return host, _check_port(rest[1:], target), True
    if text.count(":") > 1:
        # A bare IPv6 address without a port.
        if not _is_ip(text):
            raise ValueError(f"{text!r} is not host:port or an IPv6 address in target {target!r}")
        return text, default_port, False
    host, sep, port_text = text.partition(":")
    if not host:
        raise ValueError(f"missing host in target {target!r}")
    if any(c in host for c in "/ @?#") or any(ord(c) < 0x21 for c in host):
        raise ValueError(f"invalid host {host!r} in target {target!r}")
    if not sep:
        return host, default_port, False
    return host, _check_port(port_text, target), True


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:50051``, RFC 3986 section 3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_list(body: str, default_port: int, target: str, family: int) -> List[Tuple[str, int]]:
    if not body:
        raise ValueError(f"no addresses in target {target!r}")
    out = []
    for part in body.split(","):
        host, port, _ = _split_host_port(part.strip(), default_port, target)
        if _ip_version(host) != family:
            raise ValueError(f"{host!r} is not an IPv{family} address in target {target!r}")
        out.append((host, port))
    return out


def parse_target(target: str, *, secure: bool = False) -> Target:
    """Parse ``target``; the default port is 443 when ``secure`` else 80.

    Raises ValueError with the reason for a malformed target.
    """
    if not isinstance(target, str):
        raise TypeError(f"target must be a str, not {type(target).__name__}")
    text = target.strip()
    if not text:
        raise ValueError("target must not be empty")
    default_port = 443 if secure else 80

    if text.startswith("unix-abstract:"):
        name = text[len("unix-abstract:") :]
        if not name:
            raise ValueError(f"missing socket name in target {target!r}")
        return Target("unix-abstract", path="\0" + name, authority="localhost", original=target)
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("//"):
            # unix:///abs/path (URI form, empty authority); unix://x/... is not allowed.
            if not path.startswith("///"):
                raise ValueError(f"unix target {target!r} must be unix:/path or unix:///path")
            path = path[2:]
        if not path:
            raise ValueError(f"missing socket path in target {target!r}")
        if not path.startswith("/"):
            raise ValueError(
                f"unix socket path {path!r} in target {target!r} must be absolute: "
                f"unix:/abs/path or unix:///abs/path"
            )
        return Target("unix", path=path, authority="localhost", original=target)
    if text.startswith("ipv4:"):
        addrs = _parse_list(text[5:], default_port, target, 4)
        return Target("tcp", tuple(addrs), authority=format_host_port(*addrs[0]), original=target)
    if text.startswith("ipv6:"):
        addrs = _parse_list(text[5:], default_port, target, 6)
        return Target("tcp", tuple(addrs), authority=format_host_port(*addrs[0]), original=target)
    if text.startswith("dns:"):
        rest = text[4:]
        if rest.startswith("//"):
            _dns_authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise ValueError(f"dns target {target!r} must be dns:///host:port")
        text = rest
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(f"unsupported target scheme {scheme!r} in {target!r}")
    host, port, _ = _split_host_port(text, default_port, target)
    return Target(
        "tcp",
        ((host, port),),
        authority=format_host_port(host, port),
        needs_resolution=not _is_ip(host),
        original=target,
    )


def parse_bind_address(address: str) -> Target:
    """Parse a server bind address: ``host:port``, ``[v6]:port``, ``unix:/abs/path`` or
    ``unix-abstract:name``; port 0 allowed. Raises ValueError saying what is wrong."""
    if isinstance(address, str) and address.startswith(("unix:", "unix-abstract:")):
        return parse_target(address)
    if not isinstance(address, str) or not address:
        raise ValueError(f"invalid bind address {address!r}")
    text = address
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1 :].startswith(":"):
            raise ValueError(f"bind address {address!r} must be [host]:port")
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bind address {address!r} must be host:port")
    if not _is_ascii_digits(port_text) or int(port_text) > 65535:
        raise ValueError(f"invalid port {port_text!r} in bind address {address!r}")
    port = int(port_text)
    host_opt: Optional[str] = host
    return Target(
        "tcp", ((host_opt or "", port),), authority=format_host_port(host, port), original=address
    )
