"""Stock Wove with its own grpcio executor, over TLS with signed security; prints ``RESULT <json>``.

Interop case: ``executor="grpc"`` *without* ``wove_h2grpc.install()`` is Wove's
unmodified ``GrpcEnvironmentExecutor`` (grpcio). It runs here, in a separate process under
``grpcio_python()``, against ``WorkerService`` on our pure-asyncio Server. The tasks come from
``tests/worker_tasks.py`` and travel by reference, valid across interpreters.

    python tests/wove_grpcio_tls_runner.py --target localhost:PORT --ca FILE \
        --secret-env VAR [--items N]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

import worker_tasks
import wove
from wove.environment import EnvironmentExecutionError


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

    # Each task names the environment; the weave's seed tasks stay local.
    with wove.weave() as w:
        w.do(range(items), environment="grpcio_tls")(worker_tasks.doubled)
        w.do(environment="grpcio_tls")(worker_tasks.total)
    report["doubled"] = list(w.result.doubled)
    report["total"] = w.result.total

    with wove.weave() as w2:
        w2.do(environment="grpcio_tls")(worker_tasks.fails)
    try:
        w2.result.fails  # noqa: B018 - Wove raises a task's error on access
        report["error"] = None
    except worker_tasks.Refused as exc:
        report["error"] = {"type": "Refused", "message": str(exc)}
    except Exception as exc:
        report["error"] = {"type": type(exc).__name__, "message": str(exc)}

    # 8 MiB up (the task's argument), a small answer back.
    with wove.weave(payload=b"\x5a" * (8 * 1024 * 1024)) as w3:
        w3.do(environment="grpcio_tls")(worker_tasks.payload_size)
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
    with wove.weave() as w:
        w.do(environment="grpcio_bad")(worker_tasks.never)
    try:
        return {"outcome": "ran", "value": w.result.never}
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
