"""A small raw HTTP/2 gRPC client for server tests: a real h2 ``H2Connection`` on asyncio.

It deliberately does what a real client might not (ignore MAX_CONCURRENT_STREAMS, send odd
headers, reset streams) so tests can drive the server's edge cases. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import struct
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

Headers = List[Tuple[bytes, bytes]]


@dataclasses.dataclass
class RawResponse:
    """What came back on one stream."""

    headers: Headers = dataclasses.field(default_factory=list)
    data: bytes = b""
    trailers: Headers = dataclasses.field(default_factory=list)
    reset_code: Optional[int] = None
    trailers_only: bool = False

    def header(self, name: bytes) -> Optional[bytes]:
        for key, value in self.trailers + self.headers:
            if key == name:
                return value
        return None

    @property
    def status(self) -> Optional[int]:
        value = self.header(b"grpc-status")
        return None if value is None else int(value)

    @property
    def message(self) -> str:
        from wove_h2grpc.protocol.metadata import decode_grpc_message

        return decode_grpc_message(self.header(b"grpc-message") or b"")

    def messages(self) -> List[bytes]:
        """Decode the length-prefixed messages of the body (gunzipping flagged ones)."""
        out = []
        pos = 0
        while pos < len(self.data):
            flag = self.data[pos]
            (length,) = struct.unpack(">I", self.data[pos + 1 : pos + 5])
            body = self.data[pos + 5 : pos + 5 + length]
            pos += 5 + length
            out.append(zlib.decompress(body, 31) if flag else body)
        return out


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.response = RawResponse()
        self.done: asyncio.Future[RawResponse] = loop.create_future()
        self.body: List[bytes] = []

    def finish(self) -> None:
        if not self.done.done():
            self.response.data = b"".join(self.body)
            self.done.set_result(self.response)


class RawClient:
    """An HTTP/2 client connection speaking just enough gRPC for tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.streams: Dict[int, _Stream] = {}
        self.events: List[h2.events.Event] = []  # every event, for assertions
        self.goaway: Optional[h2.events.ConnectionTerminated] = None
        self.remote_settings: Dict[int, int] = {}
        self.settings_received = asyncio.Event()
        self.closed = asyncio.Event()
        self._window = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self.auto_ack = True  # False: never hand flow-control window back (a client that stalls)
        self.data_event = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        path: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        timeout: float = 10.0,
        initial_window: Optional[int] = None,
    ) -> RawClient:
        if path is not None:
            opener = asyncio.open_unix_connection(
                path, ssl=ssl_context, server_hostname=server_hostname
            )
        else:
            opener = asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=server_hostname
            )
        reader, writer = await asyncio.wait_for(opener, timeout)
        client = cls(reader, writer)
        if initial_window is not None:
            from h2.settings import SettingCodes, Settings

            client.conn.local_settings = Settings(
                client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: initial_window}
            )
        client.conn.initiate_connection()
        client.flush()
        client._task = asyncio.ensure_future(client._read_loop())
        waiters = [
            asyncio.ensure_future(client.settings_received.wait()),
            asyncio.ensure_future(client.closed.wait()),
        ]
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if not client.settings_received.is_set():
            writer.close()
            raise ConnectionError("server closed the connection (or sent no SETTINGS) in time")
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._on_event(event)
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for stream in self.streams.values():
                stream.finish()
            self._window.set()

    def _on_event(self, event: h2.events.Event) -> None:
        self.events.append(event)
        if isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.remote_settings[int(code)] = change.new_value
            self.settings_received.set()
            self._window.set()
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            return
        if isinstance(event, h2.events.WindowUpdated):
            self._window.set()
            return
        stream_id = getattr(event, "stream_id", None)
        stream = self.streams.get(stream_id) if stream_id else None
        if stream is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            stream.response.headers = list(event.headers)
            if event.stream_ended is not None:
                stream.response.trailers_only = True
        elif isinstance(event, h2.events.DataReceived):
            stream.body.append(event.data)
            self.data_event.set()
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            stream.response.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream.finish()
        elif isinstance(event, h2.events.StreamReset):
            stream.response.reset_code = int(event.error_code)
            stream.finish()

    def ignore_stream_limit(self) -> None:
        """Stop h2 from enforcing the server's MAX_CONCURRENT_STREAMS (to test refusal)."""
        from h2.settings import SettingCodes, Settings

        values = {}
        for code in list(self.conn.remote_settings):
            try:
                values[code] = self.conn.remote_settings[code]
            except KeyError:
                continue
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
        self.conn.remote_settings = Settings(client=False, initial_values=values)

    def start(
        self,
        path: str,
        *,
        metadata: Sequence[Tuple[bytes, bytes]] = (),
        grpc_timeout: Optional[str] = None,
        gzip: bool = False,
        method: bytes = b"POST",
        content_type: bytes = b"application/grpc",
        end_stream: bool = False,
    ) -> int:
        """Open a stream with request headers; returns its id."""
        stream_id = self.conn.get_next_available_stream_id()
        headers: Headers = [
            (b":method", method),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"localhost"),
            (b"content-type", content_type),
            (b"te", b"trailers"),
            (b"grpc-accept-encoding", b"identity,gzip"),
        ]
        if gzip:
            headers.append((b"grpc-encoding", b"gzip"))
        if grpc_timeout is not None:
            headers.append((b"grpc-timeout", grpc_timeout.encode()))
        headers.extend(metadata)
        self.streams[stream_id] = _Stream(asyncio.get_running_loop())
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self.flush()
        return stream_id

    async def send_body(self, stream_id: int, body: bytes, *, end_stream: bool = True) -> None:
        """Send ``body`` on the stream, waiting on flow-control windows (bounded)."""
        view = memoryview(body)
        offset = 0
        while offset < len(view):
            if self.streams[stream_id].done.done():
                return  # the server answered (and reset) before the request was sent
            try:
                window = self.conn.local_flow_control_window(stream_id)
            except h2.exceptions.ProtocolError:
                return  # the server closed or reset the stream
            size = min(window, self.conn.max_outbound_frame_size, len(view) - offset)
            if size <= 0:
                self._window.clear()
                self.flush()
                waiters = [asyncio.ensure_future(self._window.wait()), self.streams[stream_id].done]
                await asyncio.wait(waiters, timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
                waiters[0].cancel()
                if self.closed.is_set():
                    return
                continue
            self.conn.send_data(stream_id, view[offset : offset + size])
            offset += size
        if end_stream:
            try:
                self.conn.end_stream(stream_id)
            except h2.exceptions.ProtocolError:
                return
        self.flush()

    async def response(self, stream_id: int, timeout: float = 30.0) -> RawResponse:
        return await asyncio.wait_for(asyncio.shield(self.streams[stream_id].done), timeout)

    async def call(
        self,
        path: str,
        payload: bytes = b"",
        *,
        metadata: Sequence[Tuple[bytes, bytes]] = (),
        grpc_timeout: Optional[str] = None,
        gzip: bool = False,
        timeout: float = 30.0,
    ) -> RawResponse:
        """One unary call: headers, one message, END_STREAM; returns the response."""
        stream_id = self.start(path, metadata=metadata, grpc_timeout=grpc_timeout, gzip=gzip)
        body = gzip_bytes(payload) if gzip else payload
        message = (b"\x01" if gzip else b"\x00") + struct.pack(">I", len(body)) + body
        await self.send_body(stream_id, message)
        return await self.response(stream_id, timeout)

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    async def close(self) -> None:
        if not self.writer.is_closing():
            try:
                self.conn.close_connection()
                self.flush()
            except h2.exceptions.ProtocolError:
                pass
            self.writer.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()


def grpc_message(payload: bytes) -> bytes:
    """A length-prefixed, uncompressed gRPC message."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def gzip_bytes(payload: bytes) -> bytes:
    """gzip framing (zlib.compress has no wbits before Python 3.11)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    return comp.compress(payload) + comp.flush()
