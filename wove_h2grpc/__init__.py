"""wove_h2grpc: a pure-asyncio gRPC transport for Wove on ``h2`` (no grpcio).

The public API's names are exported here. The client, server, Wove executor and worker
are imported lazily so that ``import wove_h2grpc`` stays cheap (and ``client`` defers its
own transport in turn: see that module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import GrpcError
from .protocol.kinds import EOF
from .protocol.status import StatusCode

if TYPE_CHECKING:
    from .client import Channel
    from .server import Server, ServicerContext
    from .wove.executor import H2GrpcExecutor
    from .wove.install import install, uninstall

__all__ = [
    "EOF",
    "Channel",
    "GrpcError",
    "H2GrpcExecutor",
    "Server",
    "ServicerContext",
    "StatusCode",
    "__version__",
    "install",
    "uninstall",
]

_LAZY = {
    "Channel": "client",
    "Server": "server",
    "ServicerContext": "server",
    "H2GrpcExecutor": "wove.executor",
    "install": "wove.install",
    "uninstall": "wove.install",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'wove_h2grpc' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
