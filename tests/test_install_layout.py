"""The namespaced install: kernels/, cost_models/, search_spaces/ and configs/ stay at the
repository root and import only as codesign.kernels, codesign.cost_models, codesign.search_spaces
and codesign.configs (pyproject.toml's package-dir; codesign/__init__.py in a checkout), so that
codesign lives beside transformers and the PyPI package ``kernels`` it depends on."""
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

import codesign
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import CONFIG_DIR, catalog_names, load_device
from tests.install_helpers import FOLDERS, ROOT, bare_project_modules, project_dirs

BARE_IMPORT = re.compile(rf"^\s*(from|import)\s+({'|'.join(FOLDERS)})\b", re.M)

# Every module of the package (the four folders included) and the CLI, imported from the
# repository root as the test suite imports them; then what sys.modules holds.
_IMPORT_ALL = """
import json, pkgutil, sys, importlib
import codesign
names = [m.name for m in pkgutil.walk_packages(codesign.__path__, "codesign.")]
for sub in ("kernels", "cost_models", "search_spaces"):
    pkg = importlib.import_module("codesign." + sub)
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
from codesign.cli import main
assert main(["devices"]) == 0
from tests.install_helpers import bare_project_modules
print(json.dumps({"imported": len(names), "bare": bare_project_modules(),
                  "top": sorted({m.partition(".")[0] for m in sys.modules})}))
"""


def test_no_source_imports_a_folder_by_its_bare_name():
    offenders = []
    for folder in ("codesign", *FOLDERS, "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if BARE_IMPORT.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_every_module_imports_under_its_installed_name_only(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CODESIGN_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] > 60 and out["bare"] == []
    assert not {"cost_models", "search_spaces", "configs"} & set(out["top"])


def test_checkout_folders_resolve_to_the_siblings():
    for name in FOLDERS:
        module = importlib.import_module(f"codesign.{name}")
        assert Path(module.__file__).resolve().parent in {(ROOT / name).resolve(),
                                                           Path(codesign.__file__).resolve()
                                                           .parent / name}
    # the checkout root on sys.path does not offer the folders as top-level modules
    assert ROOT.resolve() in {Path(p or ".").resolve() for p in sys.path}
    for name in ("cost_models", "search_spaces", "configs"):
        assert importlib.util.find_spec(name) is None
    assert bare_project_modules() == []


def test_device_catalog_loads_through_package_data():
    data = files("codesign.configs")
    assert Path(str(data)) == CONFIG_DIR
    assert Path(str(data)) == Path(importlib.import_module("codesign.configs").__file__).parent
    shipped = sorted(p.name[:-len(".yaml")] for p in (data / "devices").iterdir()
                     if p.name.endswith(".yaml"))
    assert catalog_names() == shipped and "pixel8" in shipped
    spec = load_device("pixel8")
    assert spec.name == "pixel8" and Path(spec.path).parent == CONFIG_DIR / "devices"
    # its clusters take their per-core numbers from the shipped core files
    assert Path(spec.cpu.clusters[0].l1d_bytes.origin).parent == CONFIG_DIR / "cores"
    assert (data / "cores" / "cortex-x3.yaml").is_file()
    assert (data / "backends" / "xnnpack.yaml").is_file()
    assert load_backend("xnnpack").name == "xnnpack"
    assert any(p.name.endswith(".safetensors") for p in (data / "weights").iterdir())


def test_codesign_kernels_beside_transformers_and_pypi_kernels():
    import transformers
    kernels = importlib.import_module("kernels")  # PyPI's, which transformers depends on
    from transformers.utils import is_kernels_available

    import codesign.kernels
    from codesign.kernels.specs import TileSpec

    assert kernels is not codesign.kernels
    assert not any(Path(kernels.__file__).resolve().is_relative_to(d)
                   for d in project_dirs()["kernels"])
    assert hasattr(kernels, "get_kernel") and not hasattr(kernels, "specs")
    assert is_kernels_available() and transformers.__version__
    assert TileSpec(mc=12, nc=32, kc=16, mr=6, nr=16).mr == 6
    assert bare_project_modules() == []


@pytest.mark.slow
def test_wheel_ships_namespaced_packages_and_configs(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("codesign", *FOLDERS):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = wheels.glob("codesign-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"codesign"}
    for must in ("codesign/kernels/__init__.py", "codesign/kernels/gemm_f32.py",
                 "codesign/cost_models/devices.py", "codesign/search_spaces/mbconv.py",
                 "codesign/configs/__init__.py", "codesign/configs/devices/pixel8.yaml",
                 "codesign/configs/cores/cortex-x3.yaml",
                 "codesign/configs/backends/xnnpack.yaml", "codesign/configs/spaces/mbconv.yaml"):
        assert must in names
    for folder in ("devices", "cores", "backends", "spaces", "tile_terms", "weights"):
        shipped = {p.name for p in (ROOT / "configs" / folder).iterdir() if p.is_file()}
        assert {n.rsplit("/", 1)[1] for n in names
                if n.startswith(f"codesign/configs/{folder}/")} == shipped

    # installed (not editable) and imported away from the checkout: the package's own copies
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=600)
    code = ("import sys, codesign, codesign.kernels.specs\n"
            "from codesign.cost_models.devices import CONFIG_DIR, load_device\n"
            "assert load_device('pixel8').name == 'pixel8'\n"
            "assert load_device('pixel8').cpu.clusters[0].uarch.path.startswith(str(CONFIG_DIR))\n"
            "assert all(getattr(f, '__name__', '') != '_SiblingFinder' for f in sys.meta_path)\n"
            "print(codesign.kernels.__file__); print(CONFIG_DIR)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, text=True,
                         capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(target)}).stdout.split()
    assert out == [str(target / "codesign" / "kernels" / "__init__.py"),
                   str(target / "codesign" / "configs")]
