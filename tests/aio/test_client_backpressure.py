"""The client stops handing request bodies to asyncio while the socket is not draining."""

from __future__ import annotations

import asyncio
import contextlib
from typing import List

import h2.config
import h2.connection
import h2.settings

from wove_h2grpc import Channel, GrpcError, StatusCode

MiB = 1024 * 1024


async def test_request_bodies_wait_while_the_transport_is_paused() -> None:
    """A server that opens huge windows, then stops reading: bodies stay with the client.

    Flow control would let 20 x 1 MiB go out at once; without backpressure all of it would
    be copied into asyncio's write buffer. With it, the buffer stays near one message.
    """
    stop_reading = asyncio.Event()
    writers: List[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        conn.increment_flow_control_window(2**31 - 1 - 65535)
        writer.write(conn.data_to_send())
        data = await reader.read(65536)
        conn.receive_data(data)
        writer.write(conn.data_to_send())
        stop_reading.set()
        await asyncio.sleep(30)  # never read again

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Channel(f"127.0.0.1:{port}") as channel:
            rpc = channel.unary_unary("/t.T/M")
            calls = [asyncio.ensure_future(rpc(b"x" * MiB, timeout=1.5)) for _ in range(20)]
            await asyncio.wait_for(stop_reading.wait(), 5)
            await asyncio.sleep(0.5)
            (conn,) = channel._pool.connections()
            transport = conn.transport
            assert transport is not None
            buffered = transport.get_write_buffer_size()
            assert conn.write_paused
            assert buffered < 4 * MiB, buffered
            assert len(conn._blocked) >= 10  # the rest of the bodies wait with the client
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        for result in results:
            assert isinstance(result, GrpcError), result
            assert result.code() is StatusCode.DEADLINE_EXCEEDED, result
    finally:
        for writer in writers:
            writer.close()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
