"""The house's shape, checked: no import cycle among the project's modules, and the layer contract
in pyproject.toml (import-linter) holds. Both read the code's own imports, so a new upward import
or a new loop fails here with its module names."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "rollout_workers", "learners", "cluster")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that `name` (a dotted import target) lands in, or None outside the project.
    `from a.b import c` names a.b.c when c is a module, else a.b (the longest module prefix)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(path: Path, module: str) -> list[str]:
    """Every dotted name a module imports, module-level and function-local alike."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        targets = {resolve(name, modules) for name in imported_names(path, module)}
        # A package's __init__ is not an edge target of its own submodules' relative imports.
        graph[module] = {t for t in targets if t and t != module}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components, iteratively (the graph is small, but recursion limits are not ours)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for target in edges:
                if target not in index:
                    index[target] = low[target] = counter[0]
                    counter[0] += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    return [c for c in strongly_connected(graph) if len(c) > 1]


def levels(graph: dict[str, set[str]]) -> dict[str, int]:
    """Import level of each module: 1 + the highest level it imports (a cycle counts as one node)."""
    component_of = {m: tuple(c) for c in strongly_connected(graph) for m in c}
    level: dict[tuple, int] = {}

    def of(component):
        if component not in level:
            below = {component_of[t] for m in component for t in graph[m]} - {component}
            level[component] = 1 + max((of(c) for c in below), default=0)
        return level[component]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    return {m: of(component_of[m]) for m in graph}


def summary() -> str:
    graph = import_graph()
    modules = project_modules()
    sizes = {m: len(p.read_text().splitlines()) for m, p in modules.items()}
    largest = max(sizes, key=sizes.get)
    return (
        f"modules {len(graph)}, imports {sum(len(t) for t in graph.values())}, "
        f"levels {max(levels(graph).values())}, cycles {len(cycles(graph))}, "
        f"largest {largest} ({sizes[largest]} lines)"
    )


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layer_contract_holds():
    """import-linter's contracts in pyproject.toml: layers, and the forbidden imports."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports not installed: pip install -e '.[test]'")
    result = subprocess.run(
        [lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    print(summary())
    for cycle in cycles(import_graph()):
        print("cycle:", " <-> ".join(cycle))
