"""The layers, as the imports draw them: one way, no cycles, no protobuf below the gRPC edge."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = ROOT / "sidecar"

# Each layer may import the layers after it in this list (and the leaves), never before.
LAYERS = ("cli", "server", "rpc", "call", "pool", "fleet", "upstream", "protocol")
# Leaves: imported from anywhere, importing no layer (telemetry only names the pool's
# status type, for annotations: that import is under TYPE_CHECKING).
LEAVES = ("errors", "backoff", "config", "credentials", "telemetry")
# The emulator is a product feature on the side: only the protocol core below it.
EMULATOR_MAY_IMPORT = {"protocol", "errors"}
CONFIG_MAY_IMPORT = {"errors", "pool", "fleet", "telemetry"}


def _unit(path: Path) -> str:
    """The layer or leaf a source file belongs to (its package or module under sidecar/)."""
    relative = path.relative_to(SIDECAR)
    return relative.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The sidecar units and generated-code modules ``path`` imports at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    type_checking = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
    ]
    skipped = {id(n) for block in type_checking for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("sidecar."):
                found.add(name.split(".")[1])
            elif name.startswith("cosyvoice.sidecar.v1"):
                found.add("<protobuf>")
    return found


def _sources() -> list[Path]:
    """Every module of the package but its two entry files (the version, ``python -m``)."""
    top = {SIDECAR / "__init__.py", SIDECAR / "__main__.py"}
    return sorted(p for p in SIDECAR.rglob("*.py") if p not in top)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    unit = _unit(path)
    imported = _imports(path) - {unit, "__init__"}
    if unit == "emulator":
        assert imported <= EMULATOR_MAY_IMPORT, imported
        return
    if unit == "config":
        assert imported <= CONFIG_MAY_IMPORT, imported
        return
    if unit in LEAVES:
        allowed = {"errors", "config"} if unit == "credentials" else {"errors"}
        assert imported <= allowed, f"a leaf imports {imported}"
        return
    assert unit in LAYERS, f"{unit} is neither a layer nor a leaf: place it in the architecture"
    below = set(LAYERS[LAYERS.index(unit) + 1 :])
    allowed = below | set(LEAVES)
    if unit == "cli":
        allowed.add("emulator")  # serve --emulator and emulate, imported only then
    if LAYERS.index(unit) <= LAYERS.index("rpc"):
        allowed.add("<protobuf>")
    assert imported <= allowed, f"{unit} imports {imported - allowed}"


def test_no_generated_protobuf_below_the_grpc_edge() -> None:
    for path in _sources():
        if _unit(path) in ("call", "pool", "fleet", "upstream", "protocol", "emulator"):
            assert "<protobuf>" not in _imports(path), path


def test_serve_imports_neither_the_bench_nor_the_emulator() -> None:
    """Everything ``serve`` loads, loaded in a fresh interpreter: no lab, no emulator."""
    code = (
        "import sys\n"
        "from sidecar import cli\n"
        "cli._parser()\n"
        "import sidecar.server, sidecar.rpc, sidecar.call, sidecar.pool, sidecar.telemetry\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('sidecar.emulator', "
        "'cosyvoice_sidecar_bench')))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_at_most_a_dozen_plain_modules_under_sidecar() -> None:
    plain = [p.name for p in SIDECAR.glob("*.py")]
    assert len(plain) <= 12, plain
