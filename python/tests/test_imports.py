"""The shape of the package: every module imports on its own, the import graph of ``msp`` (module
and function level alike) has no cycle, only ``msp.torch`` imports torch, and no public name hides a
module."""

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import msp
from conftest import PYTHON_DIR

PACKAGE_DIR = PYTHON_DIR / "msp"


def module_names(package_dir: Path, package: str) -> list[str]:
    """Dotted names of every module of a package directory (``__init__`` files name their package)."""
    names = []
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join([package] + parts))
    return names


def module_path(package_dir: Path, package: str, name: str) -> Path:
    parts = name.split(".")[1:]
    path = package_dir.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Every module's imports of modules of the same package, wherever the import statement is
    (module level, inside functions or classes). ``from a import b`` counts as an import of
    ``a.b`` when that is a module, else of ``a``."""
    modules = set(module_names(package_dir, package))
    graph: dict[str, set[str]] = {}
    for name in modules:
        path = module_path(package_dir, package, name)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            else:
                continue
            edges.update(target for target in targets if target in modules and target != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (as a closed path), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


MODULES = module_names(PACKAGE_DIR, "msp")


def test_the_package_has_the_modules_this_test_knows():
    assert {"msp", "msp._arrays", "msp.plans", "msp.planner", "msp.search_settings", "msp.torch",
            "msp.torch.calibration", "msp.torch.pipeline", "msp.integrations", "msp.integrations.llmcompressor"} <= set(MODULES)
    assert "msp.plan" not in MODULES and "msp._buffers" not in MODULES


def test_the_import_graph_of_msp_has_no_cycle():
    graph = import_graph(PACKAGE_DIR, "msp")
    assert graph["msp.torch.pipeline"] >= {"msp.planner", "msp.torch.pruner", "msp.torch.calibration"}
    assert graph["msp.search"] >= {"msp.problem", "msp._arrays", "msp.search_settings"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles_through_function_level_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    return b\n")
    (pkg / "b.py").write_text("def g():\n    from .sub.c import h\n    return h\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("def h():\n    import pkg.a\n    return pkg.a\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("def h():\n    return 1\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports_on_its_own_in_a_fresh_interpreter(name):
    code = textwrap.dedent(
        f"""
        import importlib, sys
        importlib.import_module({name!r})
        print("torch" in sys.modules, "llmcompressor" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PYTHON_DIR, capture_output=True, text=True)
    if result.returncode != 0 and "No module named 'torch'" in result.stderr and name.startswith("msp.torch"):
        pytest.skip("torch is not installed")
    assert result.returncode == 0, result.stderr
    # Only the msp.torch package imports torch; no module imports llm-compressor before it is used.
    assert result.stdout.split() == [str(name.startswith("msp.torch")), "False"]


def test_no_public_name_hides_a_module():
    """``msp.plan`` is the function and no module is called ``plan``: ``import msp.plan`` fails
    instead of handing out the function, and every submodule stays reachable by its name."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("msp.plan")
    assert callable(msp.plan) and msp.plan.__module__ == "msp.planner"
    for name in MODULES:
        parent, _, leaf = name.rpartition(".")
        if not parent:
            continue
        module = importlib.import_module(name) if not name.startswith("msp.torch") else None
        if module is None:
            pytest.importorskip("torch")
            module = importlib.import_module(name)
        assert getattr(importlib.import_module(parent), leaf) is module, name
        assert leaf not in importlib.import_module(parent).__dict__.get("__all__", ()), name


def test_the_facades_only_re_export():
    """``msp/__init__.py`` and ``msp/torch/__init__.py`` define nothing themselves: every public
    name comes from the module of its concern."""
    pytest.importorskip("torch")
    import msp.torch

    for package in (msp, msp.torch):
        for name in package.__all__:
            value = getattr(package, name)
            origin = getattr(value, "__module__", None)
            if origin is not None and not isinstance(value, (int, str)):
                assert origin != package.__name__ and origin.startswith("msp."), (package.__name__, name, origin)
        tree = ast.parse(Path(package.__file__).read_text())
        defined = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert defined == [], (package.__name__, defined)


def test_the_distribution_ships_every_package():
    """pyproject.toml lists each package directory (``msp.torch`` included), so a wheel holds them all."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((PYTHON_DIR / "pyproject.toml").read_text())
    packages = sorted(".".join(("msp",) + init.parent.relative_to(PACKAGE_DIR).parts)
                      for init in PACKAGE_DIR.rglob("__init__.py"))
    assert packages == ["msp", "msp.integrations", "msp.torch"]
    assert sorted(config["tool"]["setuptools"]["packages"]) == packages
