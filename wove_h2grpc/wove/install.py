"""``install()``: Wove's ``executor="grpc"`` chooses its transport from the config.

After :func:`install`, ``executor="grpc"`` builds an :class:`~wove_h2grpc.wove.executor.
H2GrpcExecutor` that reads ``executor_config["transport"]``: ``"h2"`` (our Channel),
``"grpcio"`` (Wove's own executor, untouched) or ``"auto"``, the default (grpcio when it
imports, else h2). :func:`uninstall` puts Wove's resolver back exactly as it was.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from wove.environment import EnvironmentExecutor

__all__ = ["install", "installed", "uninstall"]

# Wove resolves executor names in wove.environment.build_executor_from_name, called through
# the module global by wove.environment.coerce_executor (used by
# ExecutorRuntime.ensure_environment); nothing else in Wove holds a reference to it, so
# replacing that one global is the whole hook.
_install_lock = threading.Lock()
_original_build: Optional[Callable[[str], EnvironmentExecutor]] = None


def _build_executor_from_name(name: str) -> EnvironmentExecutor:
    """``wove.environment.build_executor_from_name`` with ``"grpc"`` routed by transport."""
    if name == "grpc":
        # Imported with the first executor, not by install(): a process that installs the hook
        # but never builds a grpc executor does not pay for the client.
        from .executor import H2GrpcExecutor

        return H2GrpcExecutor(transport="auto")
    if _original_build is None:
        raise RuntimeError("wove_h2grpc.install() state lost: Wove's resolver is missing")
    return _original_build(name)


def install() -> None:
    """Route Wove's ``executor="grpc"`` through ``executor_config["transport"]``. Idempotent."""
    global _original_build
    import wove.environment as environment

    with _install_lock:
        if environment.build_executor_from_name is _build_executor_from_name:
            return
        _original_build = environment.build_executor_from_name
        environment.build_executor_from_name = _build_executor_from_name


def uninstall() -> None:
    """Restore Wove's own resolver exactly as :func:`install` found it. Idempotent."""
    global _original_build
    import wove.environment as environment

    with _install_lock:
        if environment.build_executor_from_name is not _build_executor_from_name:
            return
        if _original_build is not None:
            environment.build_executor_from_name = _original_build  # type: ignore[assignment]
        _original_build = None


def installed() -> bool:
    """True while :func:`install` is in effect."""
    import wove.environment as environment

    return environment.build_executor_from_name is _build_executor_from_name
