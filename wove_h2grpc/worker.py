"""The public import path of the Wove worker: ``from wove_h2grpc.worker import WorkerService``.

The implementation lives in ``wove_h2grpc.wove.worker``, beside the rest of the Wove layer.
"""

from __future__ import annotations

from .wove.worker import (
    DEFAULT_METHOD,
    InvalidRequestError,
    WorkerPermissionError,
    WorkerService,
)

__all__ = ["DEFAULT_METHOD", "InvalidRequestError", "WorkerPermissionError", "WorkerService"]
