"""The package layout's contract: imports run one way, with no circle, not even under
TYPE_CHECKING or inside a function, and the pure decision core touches no SDK, I/O or clock.

The graph is read from the source with ``ast`` (every ``import`` statement wherever it sits), so
a lazy import inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "guardian"

# Lower index = higher layer. A module may import from its own package, from any lower layer,
# and from the same layer only where SIBLINGS allows it (and then never back).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__main__"}),
    frozenset({"cli"}),
    frozenset({"commands"}),
    frozenset({"daemon", "agent", "backtest", "report", "simulated"}),
    frozenset({"cycle"}),
    frozenset({"providers", "prices"}),
    frozenset({"policy"}),
    frozenset({"config", "series"}),
    frozenset({"bounds"}),  # the config's value checks, apart so config.py stays readable
    frozenset({"model", "durations", "errors", "logs", "malloc_tuning"}),
)
SIBLINGS: frozenset[tuple[str, str]] = frozenset(
    {
        ("daemon", "report"),  # the digest and the metrics reuse the report's totals
        ("prices", "providers"),  # the GCP price refresh reuses the GCP client setup
    }
)
# What the pure core may import besides itself.
POLICY_ALLOWED = frozenset({"model", "config", "series", "durations", "errors"})
SDKS = (
    "boto3",
    "botocore",
    "google",
    "grpc",
    "pynvml",
    "sqlalchemy",
    "alembic",
    "apprise",
    "moto",
    "typer",
    "rich",
    "prometheus_client",
    "apscheduler",
    "structlog",
    "yaml",
)
CLOCK_CALLS = frozenset({"now", "utcnow", "today", "time", "monotonic", "perf_counter"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
_TREES: dict[str, ast.Module] = {
    m: ast.parse(p.read_text(encoding="utf-8")) for m, p in MODULES.items()
}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported name, line) for every import statement in ``module``, resolved to absolute."""
    for node in ast.walk(_TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if _is_package(module) else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                # ``from pkg import submodule`` imports the submodule, not just the package.
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno


def _edges(module: str) -> set[str]:
    return {name for name, _ in _imports(module) if name in MODULES and name != module}


GRAPH: dict[str, set[str]] = {m: _edges(m) for m in MODULES}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(group: str) -> int | None:
    for index, members in enumerate(LAYERS):
        if group in members:
            return index
    return None


def test_every_top_level_module_and_package_has_a_layer() -> None:
    groups = {_group(m) for m in MODULES} - {"__init__"}
    assert {g for g in groups if _layer(g) is None} == set()


def test_imports_run_down_the_layers() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        source = _group(module)
        if source == "__init__":
            continue
        for target in targets:
            dest = _group(target)
            if dest in {source, "__init__"}:
                continue
            src_layer, dest_layer = _layer(source), _layer(dest)
            assert src_layer is not None
            assert dest_layer is not None
            if dest_layer > src_layer or (source, dest) in SIBLINGS:
                continue
            wrong.append(f"{module} imports {target}")
    assert wrong == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root, targets in GRAPH.items():
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(targets)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_anywhere() -> None:
    assert _cycles() == []


def test_the_cycle_finder_finds_a_circle() -> None:
    # The test above must be able to fail: a two-module circle is reported.
    saved = dict(GRAPH)
    try:
        GRAPH["guardian.model"] = {*GRAPH["guardian.model"], "guardian.cycle"}
        assert any("guardian.model" in c and "guardian.cycle" in c for c in _cycles())
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


POLICY_MODULES = sorted(m for m in MODULES if _group(m) == "policy")


@pytest.mark.parametrize("module", POLICY_MODULES)
def test_the_policy_core_imports_only_the_base_and_the_standard_library(module: str) -> None:
    for name, line in _imports(module):
        top = name.split(".")[0]
        if top == "guardian":
            group = _group(name) if name in MODULES else name.split(".")[1]
            assert group in POLICY_ALLOWED | {"policy"}, f"{module}:{line} imports {name}"
        else:
            assert top in sys.stdlib_module_names, f"{module}:{line} imports {name}"
            assert top not in SDKS


@pytest.mark.parametrize("module", POLICY_MODULES)
def test_the_policy_core_reads_no_clock(module: str) -> None:
    # The time is always an argument: ``datetime.now()``, ``time.time()`` and friends are out.
    for node in ast.walk(_TREES[module]):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in CLOCK_CALLS, f"{module}:{node.lineno} reads the clock"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"open", "print", "input"}, f"{module}:{node.lineno}: I/O"


@pytest.mark.parametrize("package", sorted(m for m in MODULES if _is_package(m)))
def test_each_package_says_what_it_is_for(package: str) -> None:
    docstring = ast.get_docstring(_TREES[package])
    assert docstring, f"{package}/__init__.py has no docstring"
