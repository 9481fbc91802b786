"""Frame-level fuzzing shared by the server and client fuzz tests.

A conversation is a list of :class:`Frame` (split out of the bytes a real ``H2Connection``
wrote); a :class:`Plan` drawn by hypothesis mutates it the way a broken or hostile peer
would: frames dropped, duplicated, moved, truncated, given a wrong length, bit-flipped
(header or payload), moved to another stream, given other flags or another type, random
frames inserted; then the bytes are cut short and split into writes at random points.

Indices in a plan are taken modulo the conversation's current length, so one plan applies
to any conversation and hypothesis shrinks plans independently of what they mutate.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import List, Optional, Sequence, Tuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


def fuzz_settings(default_examples: int) -> settings:
    """Bounded, reproducible settings for CI (derandomized: the same examples on every run,
    so a failure there reproduces anywhere). ``WOVE_H2GRPC_FUZZ_EXAMPLES=N`` makes a long
    local run: N examples, randomized so that each run explores new ground; a failure
    prints the ``@reproduce_failure`` blob that replays it."""
    examples = os.environ.get("WOVE_H2GRPC_FUZZ_EXAMPLES")
    return settings(
        max_examples=int(examples) if examples else default_examples,
        deadline=None,  # an example is a network conversation: its time varies with the host
        derandomize=not examples,
        database=None,
        print_blob=True,
        # Each example runs a real server and connection (milliseconds, more on PyPy):
        # hypothesis' "too slow" check counts that against data generation, which is not
        # what is slow here.
        suppress_health_check=[HealthCheck.too_slow],
    )


@dataclasses.dataclass
class Frame:
    """One HTTP/2 frame as sent (or the client preface, when ``raw``).

    ``length``: a length field other than the payload's (None: the payload's). ``tag``: the
    phase of the conversation the frame is sent in (the client test's fake server sends
    tag 0 at once and tag 1 once the request arrived).
    """

    kind: int
    flags: int
    stream_id: int  # the whole 32-bit word, reserved bit included
    payload: bytes
    length: Optional[int] = None
    raw: bool = False
    tag: int = 0

    def encode(self) -> bytes:
        if self.raw:
            return self.payload
        length = len(self.payload) if self.length is None else self.length
        return (
            (length & 0xFFFFFF).to_bytes(3, "big")
            + bytes((self.kind & 0xFF, self.flags & 0xFF))
            + (self.stream_id & 0xFFFFFFFF).to_bytes(4, "big")
            + self.payload
        )


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One well-formed frame's bytes."""
    return Frame(kind, flags, stream_id, payload).encode()


def split_frames(data: bytes, *, preface: bool = False, tag: int = 0) -> List[Frame]:
    """The frames of well-formed HTTP/2 bytes (the client preface first, with ``preface``)."""
    frames: List[Frame] = []
    pos = 0
    if preface:
        assert data.startswith(PREFACE)
        frames.append(Frame(-1, 0, 0, PREFACE, raw=True, tag=tag))
        pos = len(PREFACE)
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big")
        frames.append(Frame(kind, flags, stream_id, data[pos + 9 : pos + 9 + length], tag=tag))
        pos += 9 + length
    assert pos == len(data), "not whole frames"
    return frames


class FrameReader:
    """Incremental parse of what a peer sends: complete frames out, partial ones kept."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[Tuple[int, int, int, bytes]]:
        """(type, flags, stream id, payload) of every frame completed by ``data``."""
        self._buffer += data
        out = []
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            head = bytes(self._buffer[:9])
            sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            out.append((head[3], head[4], sid, bytes(self._buffer[9 : 9 + length])))
            del self._buffer[: 9 + length]
        return out


def completion(sent: bytes, *, preface: bool, max_frame: int) -> Tuple[bytes, bool]:
    """What completes ``sent`` as the receiver frames it, and whether the receiver must
    refuse it instead: the rest of the preface (if ``sent`` stops inside it), else zeros
    up to the announced end of the last, partial frame; for a frame announced longer than
    ``max_frame`` only the rest of its 9-byte header, and True."""
    pos = 0
    if preface:
        if len(sent) < len(PREFACE):
            return PREFACE[len(sent) :], False
        pos = len(PREFACE)
    while pos + 9 <= len(sent):
        length = int.from_bytes(sent[pos : pos + 3], "big")
        if length > max_frame:
            return b"", True
        if len(sent) - pos < 9 + length:
            return b"\x00" * (9 + length - (len(sent) - pos)), False
        pos += 9 + length
    if pos == len(sent):
        return b"", False
    header = sent[pos:] + b"\x00" * (9 - (len(sent) - pos))
    length = int.from_bytes(header[:3], "big")
    return b"\x00" * (9 - (len(sent) - pos)) + b"\x00" * (0 if length > max_frame else length), (
        length > max_frame
    )


# ------------------------------------------------------------------- mutations


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One change to a frame list; ``index`` and ``value`` are reduced modulo what fits."""

    op: str
    index: int = 0
    value: int = 0
    frame: Optional[Frame] = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """How to mutate a conversation and how to write it."""

    mutations: Tuple[Mutation, ...] = ()
    cut: Optional[int] = None  # keep only this many per mille of the bytes
    splits: Tuple[int, ...] = ()  # byte offsets (modulo the length) where a write ends
    # Leave the handshake (render's ``handshake`` leading frames) unmutated, so that the
    # mutations reach the calls more often.
    spare_handshake: bool = False

    @property
    def mutated(self) -> bool:
        """False when the conversation goes out as generated (only split into writes)."""
        return bool(self.mutations) or self.cut is not None


_INDEX = st.integers(min_value=0, max_value=1 << 16)
_STREAM_IDS = st.sampled_from([0, 1, 2, 3, 5, 7, 9, 0x7FFFFFFF, 0x80000001]) | st.integers(
    0, 0xFFFFFFFF
)
_SETTING_VALUES = st.sampled_from([0, 1, 100, 4096, 16384, 65535, 2**24, 2**31 - 1, 2**32 - 1])


def _setting(pairs: Sequence[Tuple[int, int]], ack: bool) -> Frame:
    return Frame(
        SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs)
    )


def random_frames() -> st.SearchStrategy[Frame]:
    """Frames a peer may send out of nowhere: shaped ones (a PING, a WINDOW_UPDATE, a
    SETTINGS with odd values...) and raw ones of any type, flags and stream."""
    sid = _STREAM_IDS
    return st.one_of(
        st.builds(
            Frame,
            kind=st.integers(0, 12),
            flags=st.integers(0, 255),
            stream_id=sid,
            payload=st.binary(max_size=24),
        ),
        st.builds(
            lambda ack, data: Frame(PING, ACK if ack else 0, 0, data),
            st.booleans(),
            st.binary(min_size=8, max_size=8),
        ),
        st.builds(
            lambda s, inc: Frame(WINDOW_UPDATE, 0, s, inc.to_bytes(4, "big")),
            sid,
            st.sampled_from([0, 1, 65535, 2**31 - 1]) | st.integers(0, 2**32 - 1),
        ),
        st.builds(
            lambda s, code: Frame(RST_STREAM, 0, s, code.to_bytes(4, "big")),
            sid,
            st.integers(0, 15),
        ),
        st.builds(
            _setting,
            st.lists(st.tuples(st.integers(0, 9), _SETTING_VALUES), max_size=3),
            st.booleans(),
        ),
        st.builds(
            lambda last, code, debug: Frame(GOAWAY, 0, 0, struct.pack(">II", last, code) + debug),
            _STREAM_IDS,
            st.integers(0, 15),
            st.binary(max_size=8),
        ),
        st.builds(
            lambda s, dep, weight: Frame(PRIORITY, 0, s, struct.pack(">IB", dep, weight)),
            sid,
            _STREAM_IDS,
            st.integers(0, 255),
        ),
        st.builds(lambda s, end: Frame(DATA, END_STREAM if end else 0, s, b""), sid, st.booleans()),
    )


def mutations() -> st.SearchStrategy[Mutation]:
    """Any one mutation (see the module docstring)."""
    return st.one_of(
        st.builds(Mutation, st.sampled_from(["drop", "duplicate", "move"]), _INDEX, _INDEX),
        st.builds(Mutation, st.just("truncate"), _INDEX, _INDEX),
        st.builds(
            Mutation,
            st.just("length"),
            _INDEX,
            st.integers(0, 80) | st.sampled_from([16384, 65536, 2**24 - 1]),
        ),
        st.builds(Mutation, st.just("flip"), _INDEX, st.integers(0, 1 << 20)),
        st.builds(Mutation, st.just("stream"), _INDEX, _STREAM_IDS),
        st.builds(Mutation, st.just("flags"), _INDEX, st.integers(0, 255)),
        st.builds(Mutation, st.just("kind"), _INDEX, st.integers(0, 12)),
        st.builds(Mutation, st.just("insert"), _INDEX, st.just(0), random_frames()),
    )


def plans(max_mutations: int = 4) -> st.SearchStrategy[Plan]:
    """Plans with up to ``max_mutations`` mutations, an optional cut and write splits."""
    return st.builds(
        Plan,
        st.lists(mutations(), max_size=max_mutations).map(tuple),
        st.none() | st.integers(0, 1000),
        st.lists(_INDEX, max_size=4).map(tuple),
        st.booleans(),
    )


def _flip(f: Frame, bit: int) -> Frame:
    encoded = bytearray(f.encode())
    if not encoded:
        return f
    bit %= len(encoded) * 8
    encoded[bit // 8] ^= 1 << (bit % 8)
    if f.raw:
        return dataclasses.replace(f, payload=bytes(encoded))
    length = int.from_bytes(encoded[:3], "big")
    return dataclasses.replace(
        f,
        kind=encoded[3],
        flags=encoded[4],
        stream_id=int.from_bytes(encoded[5:9], "big"),
        payload=bytes(encoded[9:]),
        length=None if length == len(encoded) - 9 else length,
    )


def mutate(frames: Sequence[Frame], plan: Plan) -> List[Frame]:
    """``frames`` with ``plan``'s mutations applied, in order."""
    out = list(frames)
    for m in plan.mutations:
        if m.op == "insert":
            new = m.frame if m.frame is not None else Frame(PING, 0, 0, b"\x00" * 8)
            at = m.index % (len(out) + 1)
            tag = out[at - 1].tag if at else (out[0].tag if out else 0)
            out.insert(at, dataclasses.replace(new, tag=tag))
            continue
        if not out:
            continue
        i = m.index % len(out)
        f = out[i]
        if m.op == "drop":
            del out[i]
        elif m.op == "duplicate":
            out.insert(i, f)
        elif m.op == "move":
            del out[i]
            at = m.value % (len(out) + 1)
            tag = out[at - 1].tag if at else (out[0].tag if out else f.tag)
            out.insert(at, dataclasses.replace(f, tag=tag))
        elif m.op == "truncate":
            out[i] = dataclasses.replace(f, payload=f.payload[: m.value % (len(f.payload) + 1)])
        elif m.op == "flip":
            out[i] = _flip(f, m.value)
        elif f.raw:
            continue  # the preface has no header fields to change
        elif m.op == "length":
            out[i] = dataclasses.replace(f, length=m.value)
        elif m.op == "stream":
            out[i] = dataclasses.replace(f, stream_id=m.value)
        elif m.op == "flags":
            out[i] = dataclasses.replace(f, flags=m.value)
        elif m.op == "kind":
            out[i] = dataclasses.replace(f, kind=m.value)
    return out


def render(frames: Sequence[Frame], plan: Plan, handshake: int = 0) -> List[Tuple[int, bytes]]:
    """The mutated conversation as writes: (tag, bytes) in order, cut short and split
    where the plan says, and split where the tag changes. The first ``handshake`` frames
    are the connection's preface and SETTINGS (spared if the plan says so)."""
    if plan.spare_handshake:
        mutated = list(frames[:handshake]) + mutate(frames[handshake:], plan)
    else:
        mutated = mutate(frames, plan)
    pieces = [(f.tag, f.encode()) for f in mutated]
    total = sum(len(p) for _, p in pieces)
    keep = total if plan.cut is None else total * plan.cut // 1000
    cuts = {s % (total + 1) for s in plan.splits}
    writes: List[Tuple[int, bytes]] = []
    pos = 0
    for tag, data in pieces:
        data = data[: max(0, keep - pos)]
        start = 0
        for point in sorted(c - pos for c in cuts if pos < c < pos + len(data)):
            writes.append((tag, data[start:point]))
            start = point
        if start < len(data):
            writes.append((tag, data[start:]))
        pos += len(data)
    # Adjacent writes of one tag stay separate only where the plan split them.
    merged: List[Tuple[int, bytes]] = []
    boundary = 0
    for tag, data in writes:
        if merged and merged[-1][0] == tag and boundary not in cuts:
            merged[-1] = (tag, merged[-1][1] + data)
        else:
            merged.append((tag, data))
        boundary += len(data)
    return merged
