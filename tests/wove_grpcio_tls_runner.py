"""Stock Wove with its own grpcio executor, over TLS with signed security; prints ``RESULT <json>``.

Interop case (c) of issue 5: ``executor="grpc"`` *without* ``wove_h2grpc.install()`` is Wove's
unmodified ``GrpcEnvironmentExecutor`` (grpcio). It runs here, in a separate process under
``grpcio_python()``, against ``WorkerService`` on our pure-asyncio Server. The tasks are defined
in this file (``__main__``), so cloudpickle sends them by value.

    python tests/wove_grpcio_tls_runner.py --target localhost:PORT --ca FILE \
        --secret-env VAR [--items N]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

import wove
from wove.environment import EnvironmentExecutionError


class Rejected(Exception):
    """Raised by a task on the worker; must come back as this very type."""


def run(target: str, ca: bytes, secret_env: str, items: int) -> Dict[str, Any]:
    wove.config(
        environments={
            "grpcio_tls": {
                "executor": "grpc",
                "executor_config": {
                    "target": target,
                    "secure": True,
                    "root_certificates": ca,
                    "security": f"env:{secret_env}",
                    "metadata": {"x-project": "interop-c"},
                    "timeout": 60.0,
                },
            }
        }
    )
    report: Dict[str, Any] = {}

    with wove.weave(environment="grpcio_tls") as w:

        @w.do(range(items))
        def doubled(item: int) -> int:
            return item * 2

        @w.do
        async def total(doubled: List[int]) -> int:
            return sum(doubled)

    report["doubled"] = list(w.result.doubled)
    report["total"] = w.result.total

    with wove.weave(environment="grpcio_tls") as w2:

        @w2.do
        def fails() -> None:
            raise Rejected("no thanks")

    try:
        w2.result.fails  # noqa: B018 - Wove raises a task's error on access
        report["error"] = None
    except Rejected as exc:
        report["error"] = {"type": "Rejected", "message": str(exc)}
    except Exception as exc:
        report["error"] = {"type": type(exc).__name__, "message": str(exc)}
    # 8 MiB up (captured by the pickled callable), small answer back.
    payload = b"\x5a" * (8 * 1024 * 1024)
    with wove.weave(environment="grpcio_tls") as w3:

        @w3.do
        def payload_size() -> int:
            return len(payload)

    report["payload_size"] = w3.result.payload_size
    report["grpc_imported"] = "grpc" in sys.modules
    return report


def run_wrong_secret(target: str, ca: bytes) -> Dict[str, Any]:
    wove.config(
        environments={
            "grpcio_bad": {
                "executor": "grpc",
                "executor_config": {
                    "target": target,
                    "secure": True,
                    "root_certificates": ca,
                    "security": {"type": "signed", "secret": "not the worker's secret"},
                    "timeout": 30.0,
                },
            }
        }
    )
    with wove.weave(environment="grpcio_bad") as w:

        @w.do
        def never() -> str:
            return "ran"

    try:
        # Every task of the weave goes to the worker, Wove's "data" seed first: its error
        # is the refusal (the dependent task never runs).
        return {"outcome": "ran", "value": w.result.data, "never": w.result.never}
    except EnvironmentExecutionError as exc:
        return {"outcome": "refused", "payload": {k: str(v) for k, v in exc.payload.items()}}
    except Exception as exc:
        return {"outcome": type(exc).__name__, "message": str(exc)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--secret-env", required=True)
    parser.add_argument("--items", type=int, default=25)
    parser.add_argument("--wrong-secret", action="store_true")
    args = parser.parse_args()
    with open(args.ca, "rb") as f:
        ca = f.read()
    if args.wrong_secret:
        result = run_wrong_secret(args.target, ca)
    else:
        result = run(args.target, ca, args.secret_env, args.items)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
