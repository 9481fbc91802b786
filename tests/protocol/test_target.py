"""Target parsing: every form of API.md, and malformed targets -> ValueError saying why."""

from __future__ import annotations

import re

import pytest

from wove_h2grpc.protocol.target import (
    Target,
    format_host_port,
    parse_bind_address,
    parse_target,
)


@pytest.mark.parametrize(
    ("text", "secure", "addresses", "authority", "resolve"),
    [
        ("localhost:50051", False, (("localhost", 50051),), "localhost:50051", True),
        ("example.com:443", True, (("example.com", 443),), "example.com:443", True),
        ("127.0.0.1:8080", False, (("127.0.0.1", 8080),), "127.0.0.1:8080", False),
        ("[::1]:50051", False, (("::1", 50051),), "[::1]:50051", False),
        ("[::1]", False, (("::1", 80),), "[::1]:80", False),
        ("::1", False, (("::1", 80),), "[::1]:80", False),
        ("example.com", False, (("example.com", 80),), "example.com:80", True),
        ("example.com", True, (("example.com", 443),), "example.com:443", True),
        ("dns:///example.com:9000", False, (("example.com", 9000),), "example.com:9000", True),
        ("dns:///example.com", True, (("example.com", 443),), "example.com:443", True),
        (
            "dns://8.8.8.8/example.com:9000",
            False,
            (("example.com", 9000),),
            "example.com:9000",
            True,
        ),
        ("dns:example.com:9000", False, (("example.com", 9000),), "example.com:9000", True),
        ("dns:[::1]:9", False, (("::1", 9),), "[::1]:9", False),
        ("ipv4:1.2.3.4:5", False, (("1.2.3.4", 5),), "1.2.3.4:5", False),
        ("ipv4:1.2.3.4", True, (("1.2.3.4", 443),), "1.2.3.4:443", False),
        (
            "ipv4:127.0.0.1:1,127.0.0.2:2, 10.0.0.1:3",
            False,
            (("127.0.0.1", 1), ("127.0.0.2", 2), ("10.0.0.1", 3)),
            "127.0.0.1:1",
            False,
        ),
        ("ipv6:[::1]:5", False, (("::1", 5),), "[::1]:5", False),
        ("ipv6:[::1]:5,[fe80::1]:6", False, (("::1", 5), ("fe80::1", 6)), "[::1]:5", False),
        ("ipv6:[2001:db8::1]", True, (("2001:db8::1", 443),), "[2001:db8::1]:443", False),
        ("  localhost:1  ", False, (("localhost", 1),), "localhost:1", True),
        ("host:65535", False, (("host", 65535),), "host:65535", True),
    ],
)
def test_tcp_targets(
    text: str, secure: bool, addresses: tuple[tuple[str, int], ...], authority: str, resolve: bool
) -> None:
    target = parse_target(text, secure=secure)
    assert isinstance(target, Target)
    assert target.kind == "tcp"
    assert target.addresses == addresses
    assert target.authority == authority
    assert target.needs_resolution is resolve
    assert target.host == addresses[0][0]
    assert target.original == text


@pytest.mark.parametrize(
    ("text", "kind", "path"),
    [
        ("unix:/tmp/sock", "unix", "/tmp/sock"),
        ("unix:///tmp/sock", "unix", "/tmp/sock"),
        ("unix-abstract:name", "unix-abstract", "\0name"),
        ("unix-abstract:with/slash and space", "unix-abstract", "\0with/slash and space"),
    ],
)
def test_unix_targets(text: str, kind: str, path: str) -> None:
    target = parse_target(text)
    assert target.kind == kind
    assert target.path == path
    assert target.addresses == ()
    assert target.authority == "localhost"
    assert target.host == "localhost"


def test_target_is_frozen() -> None:
    target = parse_target("localhost:1")
    with pytest.raises(AttributeError):
        target.kind = "unix"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("host:", "invalid port ''"),
        ("host:abc", "invalid port 'abc'"),
        ("host:-1", "invalid port '-1'"),
        ("host:+1", "invalid port '+1'"),
        ("host:\uff11", "invalid port"),
        ("host:\u00b2", "invalid port"),
        ("host:0", "port 0 out of range"),
        ("host:65536", "port 65536 out of range"),
        (":50051", "missing host"),
        ("[::1", "unclosed '['"),
        ("[::1]x", "unexpected 'x' after ']'"),
        ("[::1]:", "invalid port ''"),
        ("[example.com]:1", "not an IPv6 address"),
        ("[1.2.3.4]:1", "not an IPv6 address"),
        ("a:b:c", "not host:port or an IPv6 address"),
        ("ho st:1", "invalid host 'ho st'"),
        ("host/path:1", "invalid host"),
        ("user@host:1", "invalid host"),
        ("http://host:1", "unsupported target scheme 'http'"),
        ("https://host", "unsupported target scheme 'https'"),
        ("dns://host", "must be dns:///host:port"),
        ("dns:///", "missing host"),
        ("dns:", "missing host"),
        ("ipv4:", "no addresses"),
        ("ipv4:example.com:1", "not an IPv4 address"),
        ("ipv4:[::1]:1", "not an IPv4 address"),
        ("ipv4:1.2.3.4:1,", "missing host"),
        ("ipv4:1.2.3.4:99999", "out of range"),
        ("ipv4:1.2.3.256:1", "not an IPv4 address"),
        ("ipv6:", "no addresses"),
        ("ipv6:1.2.3.4:5", "not an IPv6 address"),
        ("ipv6:[::1]:x", "invalid port 'x'"),
        ("unix:", "missing socket path"),
        ("unix://host/path", "must be unix:/path or unix:///path"),
        ("unix:relative.sock", "unix socket path 'relative.sock'"),
        ("unix:relative/sock", "must be absolute"),
        ("unix:./here.sock", "must be absolute"),
        ("unix-abstract:", "missing socket name"),
    ],
)
def test_malformed_targets(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_target(text)
    if text.strip():
        assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [None, 123, b"localhost:1", ["localhost:1"]])
def test_target_must_be_str(value: object) -> None:
    with pytest.raises(TypeError, match="target must be a str"):
        parse_target(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:0", "::1", 0),
        ("0.0.0.0:50051", "0.0.0.0", 50051),
        ("localhost:8080", "localhost", 8080),
        ("[::]:1", "::", 1),
    ],
)
def test_bind_addresses(text: str, host: str, port: int) -> None:
    target = parse_bind_address(text)
    assert target.kind == "tcp"
    assert target.addresses == ((host, port),)


def test_bind_unix() -> None:
    assert parse_bind_address("unix:/tmp/x.sock").path == "/tmp/x.sock"
    assert parse_bind_address("unix-abstract:srv").path == "\0srv"


@pytest.mark.parametrize("text", ["unix:relative.sock", "unix:run/x.sock", "unix:~/x.sock"])
def test_bind_unix_relative_path_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must be absolute: unix:/abs/path") as info:
        parse_bind_address(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid bind address"),
        ("localhost", "must be host:port"),
        (":80", "must be host:port"),
        ("[::1]", r"must be \[host\]:port"),
        ("[::1:80", r"must be \[host\]:port"),
        ("host:x", "invalid port 'x'"),
        ("host:65536", "invalid port '65536'"),
        ("host:", "invalid port ''"),
        ("host:\u00b2", "invalid port"),
    ],
)
def test_bad_bind_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bind_address(text)


def test_channel_refuses_a_relative_unix_target() -> None:
    from wove_h2grpc import Channel

    with pytest.raises(
        ValueError, match=re.escape("'relative.sock' in target 'unix:relative.sock' must be")
    ):
        Channel("unix:relative.sock")


async def test_server_refuses_a_relative_unix_bind_address() -> None:
    from wove_h2grpc import Server

    server = Server()
    try:
        with pytest.raises(ValueError, match="must be absolute"):
            await server.start("unix:relative.sock")
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("localhost", 50051, "localhost:50051"),
        ("10.0.0.1", 80, "10.0.0.1:80"),
        ("::1", 443, "[::1]:443"),
        ("fe80::1%eth0", 9, "[fe80::1%eth0]:9"),
    ],
)
def test_format_host_port_brackets_ipv6_only(host: str, port: int, text: str) -> None:
    assert format_host_port(host, port) == text
    if "%" not in host:  # a zone id is not a target form
        assert parse_target(text).addresses == ((host, port),)
