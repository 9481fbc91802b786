"""IO-free gRPC codecs and call state machines: bytes and h2 events in, values out.

Nothing in this package touches sockets, timers or asyncio; it is tested with plain
function calls and real ``h2`` peers driven in memory.
"""
