"""Imports flow one way: codesign -> search_spaces -> cost_models -> kernels (issue 17), and no
code leans on Optuna's internals (private modules, a study's storage, a trial's id).

Every import statement in the three lower packages, at module level or inside a function, is
read from the source (ast), so an upward import hidden in a function body is caught too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"kernels": 0, "cost_models": 1, "search_spaces": 2}  # everything else in codesign: 3


def layer_of(module: str) -> int | None:
    """The layer of an absolute module name of this project, None for other packages."""
    parts = module.split(".")
    if parts[0] != "codesign":
        return None
    if len(parts) > 1 and parts[1] == "configs":
        return None  # data: any layer may read it
    return LAYERS.get(parts[1], 3) if len(parts) > 1 else 3


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "codesign":  # from codesign import x: x is the module
                out += [(node.lineno, f"codesign.{a.name}") for a in node.names]
    return out


def upward_imports(package: str, root: Path = ROOT) -> list[str]:
    mine = LAYERS[package]
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module in imports(path):
            layer = layer_of(module)
            if layer is not None and layer > mine:
                found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_package_imports_a_higher_one(package):
    assert upward_imports(package) == []


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "codesign":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "codesign"


def private_imports_across_packages() -> list[str]:
    """``from codesign.<other package>.x import _name``: a private name used outside its package."""
    found = []
    for package in (*LAYERS, "codesign"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                    continue
                other = package_of(node.module)
                private = [a.name for a in node.names if a.name.startswith("_")]
                if other not in (None, package) and private:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module} {private}")
    return found


def test_no_private_name_is_imported_across_packages():
    assert private_imports_across_packages() == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "kernels"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from codesign.cost_models.ir import Op\n")
    assert upward_imports("kernels", tmp_path) == ["kernels/x.py:2 imports codesign.cost_models.ir"]


OPTUNA_PRIVATE_ATTRIBUTES = {"_storage", "_trial_id"}  # Study's storage, FrozenTrial's id


def optuna_private_uses(package: str, root: Path = ROOT) -> list[str]:
    """Optuna internals the code leans on: a module or name of ``optuna`` whose path has a part
    starting with ``_`` (imported, or reached as ``optuna._x``), and the attributes
    ``._storage`` / ``._trial_id`` on anything (a study's or a trial's private state)."""
    def private(dotted: str) -> bool:
        parts = dotted.split(".")
        return parts[0] == "optuna" and any(p.startswith("_") for p in parts[1:])

    def dotted_name(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            base = dotted_name(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    found = []
    for path in sorted((root / package).rglob("*.py")):
        where = path.relative_to(root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Attribute):
                if node.attr in OPTUNA_PRIVATE_ATTRIBUTES:
                    found.append(f"{where}:{node.lineno} .{node.attr}")
                    continue
                names = [dotted_name(node) or ""]
            found += [f"{where}:{node.lineno} {name}" for name in names if private(name)]
    return sorted(set(found))


@pytest.mark.parametrize("package", [*sorted(LAYERS), "codesign", "benchmarks"])
def test_no_optuna_internals_are_used(package):
    assert optuna_private_uses(package) == []


def test_the_optuna_check_sees_private_modules_and_attributes(tmp_path):
    pkg = tmp_path / "codesign"
    pkg.mkdir()
    (pkg / "x.py").write_text(
        "import optuna\n"
        "from optuna._hypervolume import compute_hypervolume\n"
        "from optuna.storages.journal._storage import JournalOperation\n"
        "from optuna import _imports\n"
        "def f(study, t):\n"
        "    optuna._hypervolume.wfg\n"
        "    study._storage.set_trial_user_attr(t._trial_id, 'k', 1)\n"
        "    optuna.storages.journal.JournalStorage  # public: fine\n")
    assert optuna_private_uses("codesign", tmp_path) == [
        "codesign/x.py:2 optuna._hypervolume.compute_hypervolume",
        "codesign/x.py:3 optuna.storages.journal._storage.JournalOperation",
        "codesign/x.py:4 optuna._imports",
        "codesign/x.py:6 optuna._hypervolume",
        "codesign/x.py:6 optuna._hypervolume.wfg",
        "codesign/x.py:7 ._storage",
        "codesign/x.py:7 ._trial_id",
    ]
