"""Run one standard weave through ``executor="grpc"`` in a fresh process; print ``RESULT <json>``.

Used to run the same weave with ``transport="grpcio"`` (stock Wove's executor: grpcio is
imported here, never in the pytest process) and ``transport="h2"``, and to check that a
whole weave leaves nothing behind under ``-W error::ResourceWarning``.

    python tests/wove_weave_runner.py --target 127.0.0.1:PORT --transport grpcio|h2|auto
        [--items N] [--codec json|msgpack] [--secret-env VAR] [--scenario standard|echo]
        [--block-grpc] [--reuse-instance] [--delivery unary|stream|auto]
        [--scenario slow --heartbeat SECONDS]   (5 s tasks, Wove's delivery_heartbeat_seconds)
"""

from __future__ import annotations

import argparse
import gc
import importlib.abc
import json
import sys
import time
from typing import Any, Dict, Optional


class BlockGrpc(importlib.abc.MetaPathFinder):
    """Make ``import grpc`` fail as if grpcio were not installed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "grpc" or fullname.startswith("grpc."):
            raise ImportError(f"No module named {fullname!r} (blocked by the test)")
        return None


def echo(name: str) -> Dict[str, Any]:
    import wove
    from wove_tasks import text

    with wove.weave() as w:
        w.do(environment=name)(text)  # the worker answers with what it received instead

    result = w.result.text
    return {
        "metadata_keys": [k for k, _ in result["metadata"] if k.startswith("x-")],
        "metadata": [list(pair) for pair in result["metadata"] if pair[0].startswith("x-")],
        "body_first_byte": result["body"][0],
        "body_len": len(result["body"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--transport", default=None)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--codec", default=None)
    parser.add_argument("--secret-env", default="")
    parser.add_argument(
        "--scenario", default="standard", choices=["standard", "echo", "nap", "slow"]
    )
    parser.add_argument("--delivery", default=None)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--block-grpc", action="store_true")
    parser.add_argument("--reuse-instance", action="store_true")
    args = parser.parse_args()
    if args.block_grpc:
        sys.meta_path.insert(0, BlockGrpc())

    import wove
    from wove_tasks import mapped_nap, mapped_slow, standard_weave

    import wove_h2grpc

    config: Dict[str, Any] = {"target": args.target, "timeout": 60.0,
                              "metadata": {"x-project": "runner"}}  # fmt: skip
    if args.transport is not None:
        config["transport"] = args.transport
    if args.codec is not None:
        config["codec"] = args.codec
    if args.delivery is not None:
        config["delivery"] = args.delivery
    if args.secret_env:
        config["security"] = f"env:{args.secret_env}"
    executor: Any = "grpc"
    if args.reuse_instance:
        executor = wove_h2grpc.H2GrpcExecutor()
    else:
        wove_h2grpc.install()
    wove.config(environments={"runner": {"executor": executor, "executor_config": config}})

    started = time.monotonic()
    rounds = 2 if args.reuse_instance else 1
    result: Optional[Dict[str, Any]] = None
    for _ in range(rounds):
        if args.scenario == "standard":
            result = standard_weave("runner", args.items)
        elif args.scenario == "nap":
            result = mapped_nap("runner", args.items)
        elif args.scenario == "slow":
            result = mapped_slow("runner", args.items, args.heartbeat)
        else:
            result = echo("runner")
    assert result is not None
    result["seconds"] = time.monotonic() - started
    result["grpc_imported"] = "grpc" in sys.modules
    wove_h2grpc.uninstall()
    gc.collect()
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
