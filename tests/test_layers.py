"""The package's layering as a check: walk every module's imports with ``ast``.

protocol/ and errors (stdlib, h2 events, hpack; no IO) < aio/ (asyncio, ssl, h2) < client /
server < wove/ < cli. Lower layers never import higher ones; wove only from the
Wove layer up; grpc only inside ``WorkerService.grpcio_handler``; no ``print(`` in the library.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

PACKAGE = "wove_h2grpc"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
REPO_DIR = PACKAGE_DIR.parent

# Rank of each layer: a module may import only modules of its own rank or lower.
PROTOCOL, AIO, API, WOVE_LAYER, CLI = 0, 1, 2, 3, 4
# Every module of the package, by dotted name below ``wove_h2grpc``, and its layer. A module
# named here that is gone fails the tests below (the table follows the layout), and a module
# that is not named fails test_every_module_is_in_a_layer.
LAYERS: Dict[str, int] = {
    "_version": PROTOCOL,
    "errors": PROTOCOL,
    "protocol": PROTOCOL,
    "protocol.status": PROTOCOL,
    "protocol.metadata": PROTOCOL,
    "protocol.framing": PROTOCOL,
    "protocol.target": PROTOCOL,
    "protocol.call": PROTOCOL,
    "protocol.server_call": PROTOCOL,
    "protocol.kinds": PROTOCOL,
    "protocol.health_messages": PROTOCOL,
    "aio": AIO,
    "aio._h2compat": AIO,
    "aio._h2fast": AIO,
    "aio.budget": AIO,
    "aio.deadlines": AIO,
    "aio.dial": AIO,
    "aio.driver": AIO,
    "aio.keepalive": AIO,
    "aio.server_conn": AIO,
    "aio.options": AIO,
    "aio.pool": AIO,
    "aio.resolver": AIO,
    "aio.connection": AIO,
    "aio.wire": AIO,
    "client": API,
    "calls": API,
    "server": API,
    "servicer": API,
    "health": API,
    "wove": WOVE_LAYER,
    "wove.codec": WOVE_LAYER,
    "wove.config": WOVE_LAYER,
    "wove.executor": WOVE_LAYER,
    "wove.install": WOVE_LAYER,
    "wove.credentials": WOVE_LAYER,
    "wove.stats": WOVE_LAYER,
    "wove.worker": WOVE_LAYER,
    "wove.runs": WOVE_LAYER,
    "worker": WOVE_LAYER,
    "cli": CLI,
    "cli.console": CLI,
    "cli.parser": CLI,
    "cli.logs": CLI,
    "cli.tls": CLI,
    "cli.certs": CLI,
    "cli.summaries": CLI,
    "cli.serve": CLI,
    "cli.demo": CLI,
    "cli.health": CLI,
    "cli.loops": CLI,
    "__main__": CLI,
}
# The IO-free layer: stdlib (minus IO), h2's events/errors and hpack only; never awaits.
CODECS = sorted(name for name, rank in LAYERS.items() if rank == PROTOCOL)
CODEC_ALLOWED_THIRD_PARTY = ("h2.errors", "h2.events", "hpack")
# Stdlib modules a codec must not use: codecs do no IO and never await.
CODEC_FORBIDDEN_STDLIB = {"asyncio", "socket", "ssl", "selectors", "threading", "subprocess"}


def _path(module: str) -> Path:
    """The file of a dotted module name (a package is its ``__init__.py``)."""
    base = PACKAGE_DIR.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _modules() -> List[str]:
    """Every module of the package (packages by their own name), ``__init__`` excluded."""
    out = []
    for path in PACKAGE_DIR.rglob("*.py"):
        rel = path.relative_to(PACKAGE_DIR).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if parts:
            out.append(".".join(parts))
    return sorted(out)


def _tree(module: str) -> ast.Module:
    path = PACKAGE_DIR / "__init__.py" if module == "__init__" else _path(module)
    assert path.exists(), f"{module} is named in tests/test_layers.py LAYERS but {path} is gone"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _package_of(module: str) -> str:
    """The package a module's relative imports start from."""
    if module == "__init__" or _path(module).name == "__init__.py":
        return ".".join(p for p in (PACKAGE, "" if module == "__init__" else module) if p)
    return ".".join([PACKAGE, *module.split(".")[:-1]])


def _imports(tree: ast.AST, module: str) -> Iterator[Tuple[ast.stmt, str]]:
    """Every imported module as an absolute dotted name (relative ones resolved)."""
    package = _package_of(module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                if node.module:
                    yield node, f"{base}.{node.module}"
                else:
                    for alias in node.names:
                        yield node, f"{base}.{alias.name}"
            elif node.module:
                yield node, node.module


def _internal(name: str) -> str:
    """``wove_h2grpc.aio.dial.x`` -> the longest LAYERS key it names (``aio.dial``)."""
    parts = name.split(".")[1:]
    for size in range(len(parts), 0, -1):
        candidate = ".".join(parts[:size])
        if candidate in LAYERS:
            return candidate
    return ".".join(parts)


def _is_stdlib(name: str) -> bool:
    top = name.split(".")[0]
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return top in names
    if top in sys.builtin_module_names:  # Python 3.9: look where the module lives
        return True
    import importlib.util

    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return False
    stdlib = sysconfig.get_paths()["stdlib"]
    return spec.origin.startswith(stdlib) and "site-packages" not in spec.origin


def _where(module: str, node: ast.stmt) -> str:
    return f"{_path(module).relative_to(REPO_DIR)}:{node.lineno}"


def test_every_module_is_in_a_layer() -> None:
    unknown = [m for m in _modules() if m not in LAYERS]
    assert not unknown, (
        f"modules {unknown} are not placed in a layer: add them to LAYERS in tests/test_layers.py"
    )


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_every_named_module_exists(module: str) -> None:
    assert _path(module).exists(), f"LAYERS names {module}, but {_path(module)} does not exist"


def test_layout_puts_each_layer_in_its_package() -> None:
    # The tree shows the architecture: IO-free code under protocol/, asyncio under aio/,
    # the Wove integration under wove/ (``worker`` is the public alias of wove.worker), the
    # command line under cli/.
    for module, rank in LAYERS.items():
        top = module.split(".")[0]
        if top == "protocol":
            assert rank == PROTOCOL, module
        elif top == "aio":
            assert rank == AIO, module
        elif top == "wove":
            assert rank == WOVE_LAYER, module
        elif top == "cli":
            assert rank == CLI, module


@pytest.mark.parametrize("module", CODECS)
def test_codecs_import_only_stdlib_h2_events_and_codecs(module: str) -> None:
    bad = []
    for node, name in _imports(_tree(module), module):
        if name == "__future__":
            continue
        if name.startswith(f"{PACKAGE}."):
            if LAYERS.get(_internal(name)) != PROTOCOL:
                bad.append(f"{_where(module, node)} imports {name} (codecs import only codecs)")
        elif name in CODEC_ALLOWED_THIRD_PARTY or name.startswith("hpack."):
            continue
        elif not _is_stdlib(name):
            bad.append(f"{_where(module, node)} imports {name} (not stdlib, h2 events or hpack)")
        elif name.split(".")[0] in CODEC_FORBIDDEN_STDLIB:
            bad.append(f"{_where(module, node)} imports {name} (codecs do no IO)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_lower_layers_never_import_higher(module: str) -> None:
    rank = LAYERS[module]
    bad = []
    for node, name in _imports(_tree(module), module):
        if name == PACKAGE or not name.startswith(f"{PACKAGE}."):
            if name == PACKAGE:
                bad.append(f"{_where(module, node)} imports the package itself (import submodules)")
            continue
        target = _internal(name)
        target_rank = LAYERS.get(target)
        if target_rank is None:
            bad.append(f"{_where(module, node)} imports unknown module {name}")
        elif target_rank > rank:
            bad.append(
                f"{_where(module, node)}: {module} (layer {rank}) imports {target} "
                f"(layer {target_rank})"
            )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_wove_only_in_wove_layer(module: str) -> None:
    if LAYERS[module] >= WOVE_LAYER:
        return
    bad = [
        f"{_where(module, node)} imports {name}"
        for node, name in _imports(_tree(module), module)
        if name == "wove" or name.startswith("wove.")
    ]
    assert not bad, "wove imported below the Wove layer:\n" + "\n".join(bad)


def _grpc_imports(tree: ast.AST) -> Iterator[Tuple[ast.stmt, List[str]]]:
    """Each grpc import with the chain of enclosing class/function names."""

    def visit(node: ast.AST, chain: List[str]) -> Iterator[Tuple[ast.stmt, List[str]]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(child, ast.ClassDef) else "def"
                yield from visit(child, [*chain, f"{kind} {child.name}"])
                continue
            if isinstance(child, ast.Import):
                if any(a.name == "grpc" or a.name.startswith("grpc.") for a in child.names):
                    yield child, chain
            elif (
                isinstance(child, ast.ImportFrom)
                and not child.level
                and child.module
                and (child.module == "grpc" or child.module.startswith("grpc."))
            ):
                yield child, chain
            yield from visit(child, chain)

    yield from visit(tree, [])


def test_grpc_imported_only_inside_grpcio_handler() -> None:
    allowed = ["class WorkerService", "def grpcio_handler"]
    bad = []
    for module in [*_modules(), "__init__"]:
        for node, chain in _grpc_imports(_tree(module)):
            # Inside the method body (possibly in a nested helper of it), never at class level.
            if module == "wove.worker" and chain[:2] == allowed:
                continue
            place = " > ".join(chain) or "module level"
            bad.append(f"{_where(module, node)} imports grpc at {place}")
    assert not bad, (
        "grpc may be imported only inside WorkerService.grpcio_handler():\n" + "\n".join(bad)
    )


def test_grpc_import_check_sees_nesting() -> None:
    # The checker itself: module-level, class-level and other-method imports are all found.
    source = textwrap.dedent(
        """
        import grpc
        class WorkerService:
            from grpc import aio
            def grpcio_handler(self):
                import grpc
                def inner():
                    import grpc.aio
            def other(self):
                import grpc
        """
    )
    found = [(node.lineno, chain) for node, chain in _grpc_imports(ast.parse(source))]
    assert found == [
        (2, []),
        (4, ["class WorkerService"]),
        (6, ["class WorkerService", "def grpcio_handler"]),
        (8, ["class WorkerService", "def grpcio_handler", "def inner"]),
        (10, ["class WorkerService", "def other"]),
    ]


def test_no_print_calls_in_library() -> None:
    bad = []
    for module in [*_modules(), "__init__"]:
        for node in ast.walk(_tree(module)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
            ):
                bad.append(_where(module, node))
    assert not bad, (
        "print() in the library (use logging, or sys.stdout.write in cli):\n" + "\n".join(bad)
    )


def test_codecs_never_await() -> None:
    bad = []
    for module in CODECS:
        for node in ast.walk(_tree(module)):
            if isinstance(node, (ast.Await, ast.AsyncFunctionDef, ast.AsyncWith, ast.AsyncFor)):
                bad.append(_where(module, node))
    assert not bad, "codecs must be synchronous:\n" + "\n".join(bad)


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(REPO_DIR),
    )


def test_channel_works_with_grpc_blocked() -> None:
    result = _run_python(
        """
        import sys
        sys.modules["grpc"] = None  # any "import grpc" now raises ImportError
        import wove_h2grpc
        channel_cls = wove_h2grpc.Channel
        assert channel_cls.__name__ == "Channel", channel_cls
        from wove_h2grpc import GrpcError, StatusCode
        import asyncio

        async def main():
            channel = wove_h2grpc.Channel("127.0.0.1:1", connect_timeout=2.0)
            try:
                await channel.unary_unary("/x.Y/Z")(b"", timeout=1.0)
            except GrpcError as exc:
                print("CODE", exc.code().name)
            finally:
                await channel.close()

        asyncio.run(main())
        print("OK")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "CODE UNAVAILABLE" in result.stdout, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")


def test_importing_channel_does_not_import_grpc_or_wove() -> None:
    result = _run_python(
        """
        import sys
        import wove_h2grpc.client
        import wove_h2grpc
        wove_h2grpc.Channel
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "wove"))
        print("LOADED", loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout


def test_import_wove_h2grpc_is_cheap() -> None:
    result = _run_python(
        """
        import sys
        import wove_h2grpc
        heavy = sorted(
            m for m in sys.modules
            if m.split(".")[0] in ("grpc", "wove", "h2", "asyncio", "ssl")
        )
        print("LOADED", heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    # Only codecs load on "import wove_h2grpc"; the Channel and friends load on first use.
    assert "LOADED []" in result.stdout, result.stdout


# What ``from wove_h2grpc import Channel`` leaves for later: asyncio (and what comes with
# it) with the first Channel, the call classes with the first multicallable, h2 with the
# first connection.
DEFERRED_BY_CHANNEL_IMPORT = (
    "asyncio",
    "concurrent.futures",
    "dataclasses",
    "h2",
    "hpack",
    "hyperframe",
    "inspect",
    "logging",
    "socket",
    "ssl",
    f"{PACKAGE}.aio._h2compat",
    f"{PACKAGE}.aio.connection",
    f"{PACKAGE}.aio.dial",
    f"{PACKAGE}.aio.pool",
    f"{PACKAGE}.calls",
)

_CHANNEL_IMPORT_CHILD = """
import sys

before = set(sys.modules)
from wove_h2grpc import Channel
new = set(sys.modules) - before
deferred = sys.argv[1].split(",")
print("LOADED", sorted(m for m in new if any(m == d or m.startswith(d + ".") for d in deferred)))

import asyncio


async def main():
    channel = Channel(f"127.0.0.1:{sys.argv[2]}", connect_timeout=10.0)
    echo = channel.unary_unary("/t.Echo/Echo")
    h2_stack = ("h2.connection", "hpack", "hyperframe", "wove_h2grpc.aio._h2compat")
    print("BEFORE CONNECTING", sorted(m for m in h2_stack if m in sys.modules))
    reply = await echo(b"ping", timeout=10.0)
    import h2.stream
    from wove_h2grpc.aio import _h2compat, _h2fast

    (conn,) = channel._pool.connections()
    checks = [isinstance(conn.h2, _h2compat.GrpcH2Connection)]
    if "cached_hpack" in _h2compat.APPLIED:
        checks.append(isinstance(conn.h2.encoder, _h2fast.CachingEncoder))
    if "bytes_headers_as_given" in _h2compat.APPLIED:
        checks.append(h2.stream.utf8_encode_headers is _h2compat._utf8_encode_headers)
    print("REPLY", reply, "PATCHED", all(checks))
    await channel.close()


asyncio.run(main())
"""


async def test_channel_import_defers_the_transport_and_a_call_still_works() -> None:
    import asyncio

    from wove_h2grpc import Server

    async def echo(request: bytes, context: object) -> bytes:
        return request

    server = Server({"/t.Echo/Echo": echo})
    port = await server.start("127.0.0.1:0")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHANNEL_IMPORT_CHILD,
            ",".join(DEFERRED_BY_CHANNEL_IMPORT),
            str(port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(REPO_DIR),
        )
        try:
            out, err = await asyncio.wait_for(child.communicate(), 60)
        except asyncio.TimeoutError:
            child.kill()
            await child.wait()
            raise
    finally:
        await server.stop(grace=1.0)
        await server.wait_closed()
    stdout = out.decode()
    assert child.returncode == 0, err.decode()
    assert "LOADED []" in stdout, stdout
    assert "BEFORE CONNECTING []" in stdout, stdout
    assert "REPLY b'ping' PATCHED True" in stdout, stdout


def test_layer_table_matches_style_sketch() -> None:
    # The table above is the rule; spot-check a few edges so an edit to it is deliberate.
    assert LAYERS["protocol.framing"] < LAYERS["aio.connection"] < LAYERS["client"]
    assert LAYERS["client"] < LAYERS["wove.worker"] < LAYERS["cli"]
    assert LAYERS["server"] == LAYERS["client"]
    assert LAYERS["cli"] > LAYERS["wove.executor"]
