"""Hot-path replacements for h2 and hpack internals: the view-parsing frame buffer (CPython),
the chunk-list frame buffer (other interpreters) and the caching HPACK encoder and decoder.

Each is a drop-in for the library's own class, with the same results; whether one is used is
decided by the gated ``PATCHES`` table of ``_h2compat`` (the rows ``view_frame_buffer``,
``chunk_frame_buffer`` and ``cached_hpack``), never here.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Set, Tuple

import h2.frame_buffer
import hpack
from h2.exceptions import FrameDataMissingError, ProtocolError
from hpack.hpack import encode_integer
from hpack.table import HeaderTable
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import DataFrame, Frame

__all__ = ["CachingDecoder", "CachingEncoder", "ChunkFrameBuffer", "ViewFrameBuffer"]


class ViewFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's ``FrameBuffer`` that parses each frame body from a view of its buffer.

    h2 slices the body out of the receive buffer (a copy; up to 4.4.0 it also copies the
    rest of the buffer for every frame) and hyperframe then copies it again into the
    frame. Here the body is a ``memoryview`` of the buffer, so a DATA payload is copied
    once, and consumed bytes are deleted in place (CPython makes that cheap for a
    bytearray's front). Validation, CONTINUATION handling and errors are h2's own.
    The pending bytes are in ``_data``, a bytearray, as in h2 4.3.0 and later (4.1.0
    and 4.2.0 keep bytes in ``data``, which stays empty here).
    """

    def __init__(self, server: bool = False) -> None:
        super().__init__(server=server)
        self._data = bytearray()

    def add_data(self, data: Any) -> None:
        """Append received bytes, checking the client preface first (server side)."""
        view = memoryview(data)
        if self._preamble_len:
            size = min(self._preamble_len, len(view))
            if self._preamble[:size] != view[:size]:
                raise ProtocolError("Invalid HTTP/2 preamble.")
            view = view[size:]
            self._preamble_len -= size
            self._preamble = self._preamble[size:]
        self._data += view

    def __next__(self) -> Any:
        data = self._data
        if len(data) < 9:
            raise StopIteration
        try:
            frame, length = Frame.parse_frame_header(memoryview(bytes(data[:9])))
        except (InvalidDataError, InvalidFrameError) as err:  # pragma: no cover - as h2
            raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
        if len(data) < length + 9:
            raise StopIteration
        self._validate_frame_length(length)
        view = memoryview(data)
        try:
            frame.parse_body(view[9 : 9 + length])
        except InvalidDataError as err:
            raise ProtocolError("Received frame with non-compliant data") from err
        except InvalidFrameError as err:
            raise FrameDataMissingError("Frame data missing or invalid") from err
        finally:
            view.release()
        try:
            del data[: 9 + length]
        except BufferError:  # a frame kept a view of the buffer: leave that buffer to it
            self._data = data[9 + length :]
        new_frame = self._update_header_buffer(frame)
        return new_frame if new_frame is not None else self.__next__()


class ChunkFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's ``FrameBuffer`` that keeps received bytes as a list of chunks, not a bytearray.

    For interpreters where growing, slicing and deleting from a ``bytearray`` costs far more
    than a copy (PyPy, whose bytearray is a resizable list of characters, and whose garbage
    collector frees a large buffer only at a major collection, so that every temporary
    buffer is fresh memory). Each read is kept as one ``bytes`` (its only copy while it
    waits); a frame body within one chunk is a slice of it, one spanning chunks is joined
    once. An unpadded DATA frame gets that body as its data, where hyperframe's
    ``parse_body`` would copy it once more; every other frame is parsed by hyperframe.
    Validation, CONTINUATION handling and errors are h2's own. ``data`` / ``_data`` stay
    empty: ``head()`` and ``pending`` tell what is waiting.
    """

    def __init__(self, server: bool = False) -> None:
        super().__init__(server=server)
        self._chunks: Deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already parsed
        self.pending = 0  # bytes received and not yet parsed

    def add_data(self, data: Any) -> None:
        """Append received bytes, checking the client preface first (server side)."""
        view = memoryview(data)
        if self._preamble_len:
            size = min(self._preamble_len, len(view))
            if self._preamble[:size] != view[:size]:
                raise ProtocolError("Invalid HTTP/2 preamble.")
            view = view[size:]
            self._preamble_len -= size
            self._preamble = self._preamble[size:]
        if len(view):
            self._chunks.append(view.tobytes())
            self.pending += len(view)

    def head(self) -> bytes:
        """The first (up to) 9 bytes waiting: the next frame's header once there are 9."""
        chunks = self._chunks
        if not chunks:
            return b""
        start = self._offset
        first = chunks[0]
        if len(first) - start >= 9:
            return first[start : start + 9]
        out = first[start:]
        for chunk in list(chunks)[1:]:
            out += chunk[: 9 - len(out)]
            if len(out) >= 9:
                break
        return out

    def _take(self, size: int) -> bytes:
        """The next ``size`` waiting bytes (``pending >= size > 0``), consumed."""
        chunks = self._chunks
        first = chunks[0]
        start = self._offset
        left = len(first) - start
        self.pending -= size
        if left > size:
            self._offset = start + size
            return first[start : start + size]
        if left == size:
            chunks.popleft()
            self._offset = 0
            return first[start:] if start else first
        parts: List[Any] = [memoryview(first)[start:]]
        chunks.popleft()
        got = left
        while got < size:
            chunk = chunks[0]
            need = size - got
            if len(chunk) > need:
                parts.append(memoryview(chunk)[:need])
                self._offset = need
                break
            parts.append(chunk)
            chunks.popleft()
            got += len(chunk)
            self._offset = 0
        return b"".join(parts)

    def __next__(self) -> Any:
        if self.pending < 9:
            raise StopIteration
        try:
            frame, length = Frame.parse_frame_header(memoryview(self.head()))
        except (InvalidDataError, InvalidFrameError) as err:  # pragma: no cover - as h2
            raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
        if self.pending < length + 9:
            raise StopIteration
        self._validate_frame_length(length)
        self._take(9)
        body = self._take(length) if length else b""
        if type(frame) is DataFrame and "PADDED" not in frame.flags:
            # hyperframe's DataFrame.parse_body without padding: data is the body, as bytes.
            frame.data = body
            frame.body_len = length
        else:
            try:
                frame.parse_body(memoryview(body))
            except InvalidDataError as err:
                raise ProtocolError("Received frame with non-compliant data") from err
            except InvalidFrameError as err:
                raise FrameDataMissingError("Frame data missing or invalid") from err
        new_frame = self._update_header_buffer(frame)
        return new_frame if new_frame is not None else self.__next__()


class _CountingHeaderTable(HeaderTable):
    """hpack's HPACK dynamic table plus a generation number bumped by every change.

    An encoded field or decoded block that referenced the table stays valid exactly as long
    as the generation is the same: entries are only added (``add``) or evicted (``add``,
    a ``maxsize`` change), never changed in place.
    """

    generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


# Header names whose values change on every call; encoding them with incremental indexing
# (hpack's default) would add a table entry per call, evicting the fields that repeat.
_UNINDEXED_NAMES = frozenset({b"grpc-timeout"})
# Any other name seen with more distinct values than this is treated the same way: Wove's
# signed metadata (timestamp, nonce, signature) and request ids differ on every call.
_VOLATILE_AFTER = 8
_CACHE_LIMIT = 1024


class CachingEncoder(hpack.Encoder):
    """hpack's encoder, reusing each field's encoding while the dynamic table is unchanged.

    hpack searches the tables and formats every field of every header block, about a fifth
    of a small call's client CPU. gRPC repeats the same fields on every call, and once a
    field is in the dynamic table its representation (an index, RFC 7541 section 6.1)
    depends only on the table's contents, so it is cached per table generation. The bytes
    on the wire are exactly hpack's, except for fields whose values change from call to
    call (``grpc-timeout``, and any name seen with more than eight values: signatures,
    nonces, request ids): those are sent as literals without indexing (section 6.2.2), so they
    neither churn the table nor invalidate every cached field on every call. A pending
    table size update (section 6.3) and dict input take hpack's own path.
    """

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingHeaderTable()
        self._indexed: Dict[Any, Tuple[int, bytes]] = {}
        self._literal: Dict[bytes, bytes] = {}
        self._values: Dict[bytes, Set[bytes]] = {}
        self._volatile_names: Set[bytes] = set()

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """Encode a header block (same contract and output as ``hpack.Encoder.encode``)."""
        table = self.header_table
        if table.resized or not huffman or isinstance(headers, dict):
            return super().encode(headers, huffman)
        indexed = self._indexed
        parts = []
        for header in headers:
            if isinstance(header, hpack.HeaderTuple):
                key: Any = header if header.indexable else (header[0], header[1], True)
                sensitive = not header.indexable
            elif len(header) > 2:
                key = (header[0], header[1], bool(header[2]))
                sensitive = bool(header[2])
            else:
                key = header
                sensitive = False
            hit = indexed.get(key)
            if hit is not None and hit[0] == table.generation:  # type: ignore[attr-defined]
                parts.append(hit[1])
                continue
            name, value = _as_bytes(header[0]), _as_bytes(header[1])
            if not sensitive and self._volatile(name, value):
                parts.append(self._unindexed(name, value, huffman))
                continue
            before = table.generation  # type: ignore[attr-defined]
            field = self.add((name, value), sensitive, huffman)
            if table.generation == before:  # type: ignore[attr-defined]
                if len(indexed) >= _CACHE_LIMIT:
                    indexed.clear()
                indexed[key] = (before, field)
            parts.append(field)
        return b"".join(parts)

    def _volatile(self, name: bytes, value: bytes) -> bool:
        """True for a name seen with many values (or known to vary): keep it out of the table.

        A name with a few values (``:path`` of a handful of methods) stays indexed; one
        with more than ``_VOLATILE_AFTER`` distinct values (a nonce, a signature, a
        request id) is sent unindexed from then on.
        """
        if name in _UNINDEXED_NAMES or name in self._volatile_names:
            return True
        values = self._values.get(name)
        if values is None:
            if len(self._values) >= _CACHE_LIMIT:
                self._values.clear()
            values = self._values[name] = set()
        values.add(value)
        if len(values) > _VOLATILE_AFTER:
            del self._values[name]
            if len(self._volatile_names) < _CACHE_LIMIT:
                self._volatile_names.add(name)
            return True
        return False

    def _unindexed(self, name: bytes, value: bytes, huffman: bool) -> bytes:
        """Literal header field without indexing (RFC 7541 section 6.2.2); state-free.

        The name part (a static-table index, or the Huffman-coded name) is computed once per
        name. The value, new on every call, is sent as a plain string: hpack's Huffman coder
        is pure Python and costs more CPU per call than the few bytes it would save.
        """
        prefix = self._literal.get(name)
        if prefix is None:
            index = _STATIC_NAMES.get(name)
            if index is not None:
                head = encode_integer(index, 4)  # 0000xxxx: without indexing, indexed name
                prefix = bytes(head)
            else:
                coded = self.huffman_coder.encode(name) if huffman else name
                length = encode_integer(len(coded), 7)
                if huffman:
                    length[0] |= 0x80
                prefix = b"\x00" + bytes(length) + coded
            if len(self._literal) >= _CACHE_LIMIT:
                self._literal.clear()
            self._literal[name] = prefix
        return prefix + bytes(encode_integer(len(value), 7)) + value


# RFC 7541 appendix A: the first static-table index of each header name.
_STATIC_NAMES: Dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_NAMES.setdefault(_name, _index)


class CachingDecoder(hpack.Decoder):
    """hpack's decoder, reusing the result for a header block seen with the same table.

    A gRPC peer sends the same response headers and trailers (as the same bytes) call
    after call. Decoding a block that neither adds to nor resizes the dynamic table has a
    result that depends only on the bytes and the table's generation, so such results are
    cached. Blocks that change the table always take hpack's path.
    """

    def __init__(self, max_header_list_size: int = hpack.hpack.DEFAULT_MAX_HEADER_LIST_SIZE):
        super().__init__(max_header_list_size)
        self.header_table = _CountingHeaderTable()
        self.max_allowed_table_size = self.header_table.maxsize
        self._blocks: Dict[Any, Tuple[Any, List[Any]]] = {}

    def decode(self, data: Any, raw: bool = False) -> Any:
        """Decode a header block (same contract and result as ``hpack.Decoder.decode``)."""
        key = (bytes(data), raw)
        table = self.header_table
        state = (table.generation, self.max_header_list_size, self.max_allowed_table_size)  # type: ignore[attr-defined]
        hit = self._blocks.get(key)
        if hit is not None and hit[0] == state:
            return list(hit[1])
        headers = super().decode(data, raw)
        if table.generation == state[0]:  # type: ignore[attr-defined]
            if len(self._blocks) >= _CACHE_LIMIT:
                self._blocks.clear()
            self._blocks[key] = (state, list(headers))
        return headers


def _as_bytes(value: Any) -> bytes:
    """A header name or value as hpack's encoder converts it (``hpack.hpack._to_bytes``).

    Exactly ``bytes`` is kept, anything else goes through ``str()`` and UTF-8, as hpack 4.1
    and 4.2 do (hpack 4.0 also keeps subclasses of ``bytes`` as they are).
    """
    if type(value) is bytes:
        return value
    if type(value) is not str:
        value = str(value)
    return value.encode("utf-8")  # type: ignore[no-any-return]
