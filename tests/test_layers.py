"""The package's import order (docs/architecture.md): each module imports only its own package or earlier ones, and
no import cycle, lazy imports inside functions included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "synthact"
ORDER = ["errors", "integrity", "layout", "manifest", "results", "spec", "inputs", "generation", "scan", "run", "analysis", "bench",
         "api", "cli"]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["synthact", *path.relative_to(PACKAGE).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict) -> set[str]:
    """The synthact modules `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).rstrip(".")
            out |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in out if m in known and m != name and not name.startswith(m + ".")}


def unit(module: str) -> str:
    return module.split(".")[1]


def test_every_import_points_back_along_the_flow():
    known = modules()
    wrong = [f"{name} imports {dep}" for name, path in known.items() if name != "synthact"
             for dep in imported(name, path, known) if ORDER.index(unit(dep)) > ORDER.index(unit(name))]
    assert set(map(unit, [m for m in known if m != "synthact"])) == set(ORDER)
    assert not wrong, "imports against the flow:\n" + "\n".join(sorted(wrong))


def test_no_two_modules_import_each_other():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    state: dict[str, int] = {}  # 1: on the path being explored, 2: done

    def cycle_from(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep] if dep in path else [name, dep]
            if dep not in state and (found := cycle_from(dep, [*path, dep])):
                return found
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = cycle_from(name, [name])
            assert found is None, "import cycle: " + " -> ".join(found)
