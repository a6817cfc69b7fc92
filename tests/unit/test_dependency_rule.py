"""The dependency rule (docs/architecture.md): web/ and worker/ import shared/, never each other; shared/ imports
neither, except the modules that start processes and so wire everything together."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WIRING = {"shared/tools/cli.py"}  # may import worker/ and web/: it starts every process


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports, at any depth (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name.split(".")[0] for name in found}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package, forbidden", [
    ("web", {"worker"}), ("worker", {"web"}), ("shared", {"web", "worker"}),
])
def test_packages_import_only_what_the_rule_allows(package, forbidden):
    broken = {}
    for path in _modules(package):
        name = str(path.relative_to(ROOT))
        if name in WIRING:
            continue
        bad = _imports(path) & forbidden
        if bad:
            broken[name] = sorted(bad)
    assert broken == {}, f"imports that break the dependency rule: {broken}"


def test_the_rule_is_checked_on_real_modules():
    assert len(_modules("shared")) > 10 and len(_modules("web")) > 5 and len(_modules("worker")) > 5
    assert "worker" in _imports(ROOT / "shared" / "tools" / "cli.py")  # the wiring module does what the rule lets it
