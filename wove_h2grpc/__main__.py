"""``python -m wove_h2grpc``: the ``wove-h2grpc`` command line (see :mod:`wove_h2grpc.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
