"""pyproject.toml against the repository: what `pip install .` would install, read without installing anything.

The install itself (a build, minutes of pip) is not run here; these tests check what it is made of: the
`minitome` command points at a function that exists, every folder of code is a declared package (a folder
left out would be missing from an installed copy, and only there), and the runtime dependencies are
requirements.txt's.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def code_folders() -> set:
    """Every folder holding Python code, as a dotted package name: all but the root, tests/ and hidden folders."""
    found = set()
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [s for s in subfolders if not s.startswith((".", "__")) and s not in ("tests", "build")]
        if folder != str(ROOT) and any(f.endswith(".py") for f in files):
            found.add(".".join(Path(folder).relative_to(ROOT).parts))
    return found


def test_the_minitome_command_is_the_sample_main():
    module, _, function = PYPROJECT["project"]["scripts"]["minitome"].partition(":")
    assert (module, function) == ("minitome.sample", "main")  # the same as python -m minitome.sample
    assert callable(getattr(importlib.import_module(module), function))


def test_every_folder_of_code_is_a_declared_package():
    declared = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert code_folders() == declared
    assert {p for p in declared if "." not in p} == {"minitome", "unet", "sampler", "weights"}  # the user's layout


def test_the_runtime_dependencies_are_requirements_txt():
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    required = [line.split("#")[0].replace(" ", "") for line in lines if line.split("#")[0].strip()]
    assert PYPROJECT["project"]["dependencies"] == required
    assert [r.split(">")[0] for r in required] == ["torch", "numpy", "safetensors", "pillow", "regex"]


def test_help_exits_zero():
    """`minitome --help` runs this: the module's main, through its `python -m` entry."""
    done = subprocess.run([sys.executable, "-m", "minitome.sample", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--weights" in done.stdout
