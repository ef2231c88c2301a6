"""The house, read from the source: no import cycle among the project's modules, nothing in
`shared/` that imports or loads a service (it holds libraries only), no file under `services/` or
`shared/` (nor the CLI, tools, benchmarks) past 400 lines, and ruff clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "services", "voucherstream")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (a function-level or
    TYPE_CHECKING import closes a cycle as much as a top-level one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def test_no_import_cycle():
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # A package's __init__ importing its own submodules is not a cycle of the kind meant here.
    cycles = [c for c in cycles if not any(a == b.rsplit(".", 1)[0] for a, b in zip(c, c[1:], strict=False))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_shared_holds_libraries_only():
    known = modules()
    offenders = []
    for m, path in known.items():
        if not m.startswith("shared"):
            continue
        text = path.read_text()
        reached = {n for n in imports(path, known) if not n.startswith("shared")}
        if reached or "import_module(" in text or "__import__(" in text:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(reached) or 'loads modules by name'}")
    assert not offenders, "shared/ reaches into the services: " + "; ".join(offenders)


def test_no_python_file_of_ours_is_past_400_lines():
    long = {str(p.relative_to(ROOT)): n for d in ("services", "shared", "voucherstream", "tools", "bench")
            for p in (ROOT / d).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_ruff_finds_nothing():
    """The linter, configured in pyproject.toml ([tool.ruff]), over the whole repository."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_finds_nothing():
    """The type checker, configured in pyproject.toml ([tool.mypy], with pydantic's plugin), over
    the services, shared/, the CLI, tools/ and the benchmarks."""
    done = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_checks_bite():
    """The readers above find what they look for (so a green run means something)."""
    known = modules()
    assert "services.issuance.checkout_store" in imports(ROOT / "services/issuance/redemption_writer.py", known)
    assert "shared.events" in imports(ROOT / "services/issuance/checkout_handlers.py", known)
    assert "services.issuance.settings" in imports(ROOT / "voucherstream/cli.py", known)
