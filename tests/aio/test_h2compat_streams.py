"""Amortised stream pruning on both sides (replacing h2's walk over every stream per new one)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events

from wove_h2grpc.aio._h2compat import make_h2_connection, make_server_h2_connection

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/t.T/M"),
    (b":authority", b"x"),
    (b"content-type", b"application/grpc"),
]


def _pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client = make_h2_connection(client_side=True)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def _round_trip(client: h2.connection.H2Connection, server: h2.connection.H2Connection) -> None:
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    for event in server.receive_data(client.data_to_send()):
        if isinstance(event, h2.events.RequestReceived):
            server.send_headers(event.stream_id, [(b":status", b"200")], end_stream=True)
    events = client.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_closed_streams_are_pruned_as_the_table_grows() -> None:
    client, server = _pair()
    sizes = []
    for _ in range(2000):
        _round_trip(client, server)
        sizes.append(len(client.streams))
    # Without pruning the table would hold all 2,000 closed streams.
    assert max(sizes) <= 128, max(sizes)
    assert min(sizes[100:]) < 64


def test_pruning_keeps_open_streams() -> None:
    client, server = _pair()
    open_ids = []
    for _ in range(50):  # the plain h2 server allows 100 concurrent streams
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, REQUEST)  # left open: no END_STREAM
        open_ids.append(sid)
    server.receive_data(client.data_to_send())
    for _ in range(1000):
        _round_trip(client, server)
    assert all(sid in client.streams for sid in open_ids)
    assert len(client.streams) < 50 + 2 * 128


def _server_pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    server = make_server_h2_connection(
        max_concurrent_streams=1000,
        max_header_list_size=8192,
        initial_window_size=1 << 20,
        max_frame_size=1 << 14,
        connection_window_size=1 << 20,
    )
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def test_the_server_prunes_closed_streams_as_the_table_grows() -> None:
    client, server = _server_pair()
    sizes = []
    for _ in range(2000):
        _round_trip(client, server)
        sizes.append(len(server.streams))
    assert max(sizes) <= 128, max(sizes)
    assert min(sizes[100:]) < 64


def test_server_pruning_keeps_open_streams() -> None:
    client, server = _server_pair()
    open_ids = []
    for _ in range(50):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, REQUEST)  # left open: no END_STREAM
        open_ids.append(sid)
    server.receive_data(client.data_to_send())
    for _ in range(1000):
        _round_trip(client, server)
    assert all(sid in server.streams for sid in open_ids)
    assert len(server.streams) < 50 + 2 * 128
