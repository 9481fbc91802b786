"""asyncio side: the HTTP/2 driver around ``h2``, dialing, and the connection pool.

The only layer that touches sockets, timers and tasks.
"""
