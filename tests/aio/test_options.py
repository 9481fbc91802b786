"""Channel options: checked once by ChannelOptions.build, each error naming its field."""

from __future__ import annotations

import re
import ssl
from typing import Any, Dict

import pytest

from wove_h2grpc import Channel
from wove_h2grpc.aio.options import ChannelOptions, check_compression, pem_bytes
from wove_h2grpc.protocol.target import parse_target


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"max_receive_message_length": 0}, ValueError, "max_receive_message_length"),
        ({"max_receive_message_length": -2}, ValueError, "max_receive_message_length"),
        ({"max_receive_message_length": "4"}, TypeError, "max_receive_message_length"),
        ({"max_send_message_length": -5}, ValueError, "max_send_message_length"),
        ({"max_send_message_length": True}, TypeError, "max_send_message_length"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"connect_timeout": None}, ValueError, "connect_timeout"),
        ({"connect_timeout": float("nan")}, ValueError, "connect_timeout"),
        ({"keepalive_time": -1}, ValueError, "keepalive_time"),
        ({"keepalive_timeout": 0}, ValueError, "keepalive_timeout"),
        ({"compression": "br"}, ValueError, "compression"),
        ({"lb_policy": "random"}, ValueError, "lb_policy"),
        ({"transparent_retry": 1}, TypeError, "transparent_retry"),
        ({"server_hostname": 5}, TypeError, "server_hostname"),
        ({"server_hostname": ""}, ValueError, "server_hostname"),
        ({"authority": "h\u00e9:1"}, ValueError, "authority"),
        ({"user_agent": "bad\nagent"}, ValueError, "user_agent"),
        ({"ssl_context": "ctx"}, TypeError, "ssl_context"),
        ({"root_certificates": 5, "secure": True}, TypeError, "root_certificates"),
        (
            {"root_certificates": "not a certificate", "secure": True},
            ValueError,
            "root_certificates",
        ),
        ({"root_certificates": b"x"}, ValueError, "root_certificates"),  # needs secure=True
        ({"private_key": b"k", "secure": True}, ValueError, "private_key"),
        ({"certificate_chain": b"c", "secure": True}, ValueError, "certificate_chain"),
    ],
)
def test_each_bad_option_raises_naming_its_field(
    kwargs: Dict[str, Any], error: type, field: str
) -> None:
    with pytest.raises(error, match=re.escape(field)):
        Channel("127.0.0.1:1", **kwargs)
    with pytest.raises(error) as info:
        ChannelOptions.build("127.0.0.1:1", field_name=lambda name: f"cfg[{name}]", **kwargs)
    assert f"cfg[{field}]" in str(info.value)  # the caller's spelling of the field


def test_max_receive_message_length_zero_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        Channel("127.0.0.1:1", max_receive_message_length=0)
    assert str(info.value) == (
        "max_receive_message_length must be a positive number of bytes or -1 (unlimited), not 0"
    )
    assert (
        Channel("127.0.0.1:1", max_receive_message_length=-1)._opts.max_receive_message_length == -1
    )
    assert Channel("127.0.0.1:1", max_send_message_length=0)._opts.max_send_message_length == 0


def test_pem_next_to_an_ssl_context_is_refused_not_ignored() -> None:
    context = ssl.create_default_context()
    with pytest.raises(ValueError, match="root_certificates cannot be combined with ssl_context"):
        Channel("127.0.0.1:1", ssl_context=context, root_certificates=b"pem")


def test_built_options_are_frozen_and_encoded_for_the_wire() -> None:
    options = ChannelOptions.build(
        "dns:///workers.internal:9000",
        metadata={"x-team": "a"},
        user_agent="reports/1.0",
        compression="identity",
        timeout=3,
    )
    assert options.authority == b"workers.internal:9000"
    assert options.scheme == b"http"
    assert options.metadata == ((b"x-team", b"a"),)
    assert options.user_agent.startswith(b"reports/1.0 wove_h2grpc/")
    assert options.compression is None
    assert options.timeout == 3.0 and isinstance(options.timeout, float)
    with pytest.raises(AttributeError):
        options.timeout = 5.0  # type: ignore[misc]


def test_ssl_context_implies_secure_and_server_hostname_names_the_authority() -> None:
    context = ssl.create_default_context()
    options = ChannelOptions.build("10.0.0.1:443", ssl_context=context, server_hostname="api")
    assert options.scheme == b"https"
    assert options.ssl_context is context
    assert options.authority == b"api"
    explicit = ChannelOptions.build("10.0.0.1:443", server_hostname="api", authority="x:1")
    assert explicit.authority == b"x:1"


def test_a_parsed_target_is_used_as_given() -> None:
    target = parse_target("workers.internal", secure=True)
    options = ChannelOptions.build(target, secure=True)
    assert options.target is target
    assert options.authority == b"workers.internal:443"


def test_check_compression_and_pem_bytes() -> None:
    assert check_compression("gzip") == "gzip"
    assert check_compression(None) is None
    with pytest.raises(ValueError, match=r"^per_call must be 'gzip' or None, not 'zstd'$"):
        check_compression("zstd", "per_call")
    assert pem_bytes("-----BEGIN-----", "root_certificates") == b"-----BEGIN-----"
    assert pem_bytes(bytearray(b"pem"), "root_certificates") == b"pem"
    with pytest.raises(ValueError, match="private_key must be ASCII PEM text"):
        pem_bytes("caf\u00e9", "private_key")
    with pytest.raises(TypeError, match="certificate_chain must be PEM bytes or str, not int"):
        pem_bytes(5, "certificate_chain")
