"""imprint is importable only under its own namespace: no generic top-level ``engine``/``kernels``/``models``."""
import subprocess
import sys

CODE = r"""
import importlib, json
out = {}
for name in ("imprint", "imprint.engine.cli", "imprint.kernels", "imprint.models.registry", "engine", "kernels", "models"):
    try:
        importlib.import_module(name)
        out[name] = True
    except ImportError:
        out[name] = False
print(json.dumps(out))
"""


def test_only_the_imprint_namespace_is_installed(tmp_path):
    # run outside the repository, so the current folder cannot supply the bare names
    r = subprocess.run([sys.executable, "-c", CODE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"imprint": True, "imprint.engine.cli": True, "imprint.kernels": True,
                   "imprint.models.registry": True, "engine": False, "kernels": False, "models": False}


def test_python_dash_m_imprint_runs_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "imprint", "--help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "membership" in r.stdout and "attribute" in r.stdout


def test_every_source_package_is_declared_in_pyproject():
    """A subpackage missing from pyproject's ``packages`` would be absent from a wheel (non-editable install)."""
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {v: k for k, v in conf["package-dir"].items()}  # folder -> package name
    found = set()
    for top, name in mapping.items():
        for init in (root / top).rglob("__init__.py"):
            rel = init.parent.relative_to(root / top).parts
            found.add(".".join((name, *rel)))
    assert found == set(conf["packages"]), sorted(found ^ set(conf["packages"]))
