"""``wove-h2grpc health TARGET``: one ``grpc.health.v1.Health/Check`` call, as an exit status.

Made for a Kubernetes exec probe (or any script): 0 when the service is SERVING, 1 when it
answers any other status, 2 when there is no answer to read (the call failed: cannot
connect, NOT_FOUND for an unknown service, deadline, TLS; or the options are wrong), with
one line on stderr saying why. The status goes to stdout as ``status: NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any, Dict

from ..errors import GrpcError
from ..protocol.health_messages import (
    HealthMessageError,
    ServingStatus,
    decode_response,
    encode_request,
)
from .console import CliError, out
from .tls import client_tls_options

__all__ = ["EXIT_NOT_SERVING", "EXIT_SERVING", "run"]

#: Exit status when the service is SERVING.
EXIT_SERVING = 0
#: Exit status for any other status the server answered (NOT_SERVING, UNKNOWN, ...).
EXIT_NOT_SERVING = 1
# A failed check exits with console.EXIT_PROBE_FAILED (2), through CliError.

# Time for closing the channel after the call, beyond --timeout: the probe's whole run is
# bounded even if a peer stops answering in the middle of the call.
_CLOSE_ALLOWANCE = 1.0


async def run(args: argparse.Namespace) -> int:
    """Check ``args.service`` on ``args.target``; the exit status (a failure raises CliError)."""
    from ..client import Channel
    from ..health import CHECK_METHOD

    options: Dict[str, Any] = client_tls_options(
        args.tls, args.tls_ca, args.tls_cert, args.tls_key, args.server_hostname
    )
    timeout = args.timeout
    try:
        channel = Channel(args.target, connect_timeout=timeout, **options)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    try:
        check = channel.unary_unary(CHECK_METHOD)
        reply = await asyncio.wait_for(
            check(encode_request(args.service), timeout=timeout), timeout + _CLOSE_ALLOWANCE
        )
    except GrpcError as exc:
        details = (exc.details() or "").splitlines()
        reason = f"{exc.code().name}: {details[0]}" if details else exc.code().name
        raise CliError(f"{args.target}: {reason}") from None
    except asyncio.TimeoutError:
        raise CliError(f"{args.target}: DEADLINE_EXCEEDED: no answer in {timeout:g} s") from None
    finally:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(channel.close(), _CLOSE_ALLOWANCE)
    try:
        status = decode_response(reply)
    except HealthMessageError as exc:
        raise CliError(f"{args.target}: the answer is not a HealthCheckResponse: {exc}") from None
    name = status.name if isinstance(status, ServingStatus) else str(status)
    out(f"status: {name}")
    return EXIT_SERVING if status is ServingStatus.SERVING else EXIT_NOT_SERVING
