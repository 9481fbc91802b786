"""Fixtures shared by every test module."""

from __future__ import annotations

from pathlib import Path

import pytest
from _support import Certs, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """One trustme CA with server (localhost, 127.0.0.1, ::1, server.test) and client certs."""
    directory: Path = tmp_path_factory.mktemp("certs")
    return make_certs(directory)
