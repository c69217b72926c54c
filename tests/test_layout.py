"""The floors of the package, enforced: a module imports only its own floor and the floors below
it, the compression core has no import circle, and nothing below ``ajpq.run`` imports Ray or
MLflow. Every import counts, the ones inside functions too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ajpq

PACKAGE = Path(ajpq.__file__).parent

# bottom to top; a module may import from its floor and the ones below (agent: only itself)
FLOORS = ("core", "task", "export", "agent", "search", "run", "cli")
INDEPENDENT = {"agent"}  # RLlib's DDPG knows nothing of compression
RAY_FREE = {"core", "task", "export", "search"}
FORBIDDEN_BELOW_RUN = ("ray", "mlflow")


def module_sources(root: Path = PACKAGE) -> dict[str, str]:
    """Every module of the package by dotted name (``ajpq.core.graph``; a package's
    ``__init__`` by the package's name)."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        sources[".".join(parts)] = path.read_text()
    return sources


def imports_of(name: str, source: str, modules: set[str]) -> set[str]:
    """The modules ``source`` imports (absolute names; ``from pkg import submodule`` is the
    submodule), wherever the import statement is."""
    found = set()
    package = name if f"{name}.__init__" in modules else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "ajpq" or len(parts) == 1:
        return None  # the top-level face re-exports every floor
    return parts[1]


def violations(sources: dict[str, str]) -> list[str]:
    """Every import that breaks the floors, as 'importer -> imported (why)'."""
    modules = set(sources)
    problems = []
    for name, source in sources.items():
        floor = floor_of(name)
        if floor is None:
            continue
        if floor not in FLOORS:
            problems.append(f"{name}: its folder {floor!r} is not a floor; add it to FLOORS")
            continue
        for imported in sorted(imports_of(name, source, modules)):
            top = imported.split(".")[0]
            if floor in RAY_FREE and top in FORBIDDEN_BELOW_RUN:
                problems.append(f"{name} -> {imported} (only ajpq.run may use Ray or MLflow)")
            target = floor_of(imported)
            if top != "ajpq" or target is None or target == floor:
                if imported == "ajpq":
                    problems.append(f"{name} -> ajpq (import from the floor, not the face)")
                continue
            if floor in INDEPENDENT:
                problems.append(f"{name} -> {imported} ({floor} imports nothing of ajpq)")
            elif target not in FLOORS or FLOORS.index(target) > FLOORS.index(floor):
                problems.append(f"{name} -> {imported} (upward: {floor} is below {target})")
    return problems


def cycles(sources: dict[str, str], prefix: str) -> list[list[str]]:
    """Import circles among the modules under ``prefix`` (Tarjan's strongly connected parts)."""
    modules = set(sources)
    graph = {
        name: sorted(m for m in imports_of(name, src, modules) if m in modules and m != name)
        for name, src in sources.items()
        if name.startswith(prefix)
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, []):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_import_respects_the_floors():
    assert violations(module_sources()) == []


def test_an_upward_import_is_caught():
    sources = module_sources()
    sources["ajpq.core.graph"] += "\n\ndef f():\n    from ajpq.run.driver import run_search\n"
    sources["ajpq.search.space"] += "\nimport ray\n"
    sources["ajpq.agent.module"] += "\nfrom ajpq.core import policy\n"
    found = violations(sources)
    assert "ajpq.core.graph -> ajpq.run.driver (upward: core is below run)" in found
    assert "ajpq.search.space -> ray (only ajpq.run may use Ray or MLflow)" in found
    assert "ajpq.agent.module -> ajpq.core.policy (agent imports nothing of ajpq)" in found
    assert len(found) == 3


def test_no_import_circle_in_the_core():
    assert cycles(module_sources(), "ajpq.core") == []
    sources = module_sources()
    sources["ajpq.core.graph"] += "\nfrom ajpq.core.split_check import check_split_groups\n"
    assert any("ajpq.core.graph" in part for part in cycles(sources, "ajpq.core"))


@pytest.mark.parametrize(
    "module", ["ajpq.search.env", "ajpq.search.methods", "ajpq.search.config", "ajpq.export"]
)
def test_the_floors_below_run_start_no_ray(module):
    """Importing a Ray-free floor (and what it imports) loads neither Ray nor MLflow."""
    code = f"import sys, {module}; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_modules_stay_small():
    """No module over ~400 lines (a flat list of independent pieces may be longer)."""
    long = {
        name: source.count("\n")
        for name, source in module_sources().items()
        if source.count("\n") > 440
    }
    assert long == {}


TESTS = PACKAGE.parent / "tests"
# modules whose tests live in a file named after what they serve together (the rest have
# tests/<floor>/test_<module>.py)
TESTED_IN = {
    "ajpq/agent/algorithm.py": "tests/agent/test_ddpg.py",
    "ajpq/agent/config.py": "tests/agent/test_ddpg.py",
    "ajpq/agent/learner.py": "tests/agent/test_ddpg.py",
    "ajpq/agent/module.py": "tests/agent/test_ddpg.py",
    "ajpq/agent/presets.py": "tests/agent/test_pendulum.py",
    "ajpq/agent/defaults.py": "tests/search/test_config.py",
    "ajpq/core/graph.py": "tests/core/test_analysis.py",
    "ajpq/core/coupling.py": "tests/core/test_topologies.py",
    "ajpq/core/builder.py": "tests/core/test_policy.py",
    "ajpq/core/validation.py": "tests/core/test_policy.py",
    "ajpq/core/importance.py": "tests/core/test_budget.py",
    "ajpq/core/latency.py": "tests/search/test_space_env.py",
    "ajpq/core/materialize.py": "tests/core/test_apply.py",
    "ajpq/core/configtypes.py": "tests/search/test_config.py",
    "ajpq/core/budget/types.py": "tests/core/test_budget.py",
    "ajpq/core/budget/state.py": "tests/core/test_budget.py",
    "ajpq/core/budget/wall.py": "tests/core/test_budget.py",
    "ajpq/core/budget/fill.py": "tests/core/test_budget.py",
    "ajpq/task/models.py": "tests/task/test_train_and_models.py",
    "ajpq/task/train.py": "tests/task/test_train_and_models.py",
    "ajpq/search/context.py": "tests/run/test_cluster.py",
    "ajpq/search/space.py": "tests/search/test_space_env.py",
    "ajpq/search/env.py": "tests/search/test_space_env.py",
    "ajpq/search/pareto.py": "tests/run/test_sweep.py",
    "ajpq/search/sweep_config.py": "tests/run/test_sweep.py",
    "ajpq/run/context_source.py": "tests/run/test_cluster.py",
    "ajpq/run/driver.py": "tests/run/test_search_e2e.py",
    "ajpq/run/reservation.py": "tests/run/test_autoscaling.py",
    "ajpq/run/devicework.py": "tests/run/test_cluster.py",
    "ajpq/run/strategies.py": "tests/run/test_methods.py",
    "ajpq/run/report.py": "tests/run/test_search_e2e.py",
    "ajpq/run/session.py": "tests/run/test_search_e2e.py",
    "ajpq/run/evaluator.py": "tests/run/test_pool.py",
    "ajpq/run/writer.py": "tests/run/test_durability.py",
    "ajpq/run/journal.py": "tests/run/test_durability.py",
    "ajpq/run/tracking.py": "tests/run/test_durability.py",
    "ajpq/run/export_run.py": "tests/run/test_search_e2e.py",
    "ajpq/export/requantize.py": "tests/export/test_qdq.py",
}


def test_tests_mirror_the_package():
    """Every module has its test file: tests/<floor>/test_<module>.py, or the one named in
    TESTED_IN, which must exist."""
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(PACKAGE.parent).as_posix()
        folder = path.parent.relative_to(PACKAGE)
        floor = folder.parts[0] if folder.parts else ""
        mirrored = TESTS / floor / f"test_{path.stem}.py"
        named = TESTED_IN.get(relative)
        if not mirrored.exists() and not (named and (PACKAGE.parent / named).exists()):
            missing.append(relative)
    assert missing == []


def test_the_driver_is_no_helper_library():
    """Inside ``run`` the driver is on top: only the sweep (which runs searches) and the CLI
    import it; what the driver uses lives in the modules below it."""
    sources = module_sources()
    importers = sorted(
        name
        for name, source in sources.items()
        if "ajpq.run.driver" in imports_of(name, source, set(sources))
    )
    assert importers == ["ajpq", "ajpq.cli", "ajpq.run.sweep"]
