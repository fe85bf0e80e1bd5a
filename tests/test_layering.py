"""Data flows one way: each module imports only modules above it in ORDER (design.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import charlstm

ORDER = [
    "errors",
    "config",
    "presets",
    "vocab",
    "data",
    "model",
    "stepper",
    "gates",
    "distributed",
    "evaluation",
    "policy",
    "lr_schedule",
    "trainer",
    "checkpoint",
    "finetune",
    "runstate",
    "sample",
    "metrics",
    "plot",
    "runfolder",
    "runner",
    "api",
    "scheduler",
    "protocol",
    "server",
    "export",
    "inspection",
    "inspect_page",
    "cli_parser",
    "cli_train",
    "cli",
]
EXEMPT = {"__init__", "__main__"}
# These may take `__version__` from the package, nothing else.
VERSION_READERS = ("runfolder", "runner", "api", "cli_parser", "cli")
PACKAGE = Path(charlstm.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in EXEMPT)


def internal_imports(module: str, package: Path = PACKAGE) -> set[str]:
    """Modules of the package that `module` imports, anywhere in it (lazy imports included)."""
    tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == "charlstm":
                parts = node.module.split(".")
                found.add(parts[1] if len(parts) > 1 else "__init__")
            elif node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # `from . import x`: x is a module, or a name from __init__
                for alias in node.names:
                    found.add(alias.name if (package / f"{alias.name}.py").exists() else "__init__")
            elif node.level > 1:
                found.add("<outside the package>")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "charlstm":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def test_every_module_has_a_place_in_the_order():
    missing = sorted(set(MODULES) - set(ORDER))
    assert not missing, f"add {missing} to ORDER in tests/test_layering.py, below what they import"


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_only_modules_above_it(module):
    rank = ORDER.index(module) if module in ORDER else len(ORDER)
    for imported in sorted(internal_imports(module)):
        if imported == "__init__":
            assert module in VERSION_READERS, f"{module} imports the package itself"
            continue
        assert imported in ORDER, f"{module} imports {imported}, which is not in ORDER"
        assert ORDER.index(imported) < rank, f"{module} imports {imported}, which comes after it"


def test_only_the_version_is_taken_from_the_package():
    for module in MODULES:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
                for alias in node.names:
                    if not (PACKAGE / f"{alias.name}.py").exists():
                        assert alias.name == "__version__", f"{module} imports {alias.name} from the package"
                        assert module in VERSION_READERS, module


def test_the_checker_sees_relative_absolute_and_lazy_imports(tmp_path):
    source = (
        "from .errors import CharLSTMError\n"
        "import charlstm.model\n"
        "from charlstm.sample import x\n"
        "from . import __version__\n"
        "def f():\n"
        "    from .cli import main\n"
    )
    (tmp_path / "probe.py").write_text(source)
    (tmp_path / "cli.py").write_text("")
    assert internal_imports("probe", tmp_path) == {"errors", "model", "sample", "__init__", "cli"}


@pytest.mark.slow
def test_importing_the_package_has_no_side_effects():
    """No argv parsing, device probing or file reads at import: importing cli must not read argv."""
    import subprocess
    import sys

    code = "import sys; sys.argv = ['x', '--bogus']; import charlstm.cli, charlstm.api; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
