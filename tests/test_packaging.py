"""passes/ and models/ ship as graphprune.passes and graphprune.models, never as top-level names."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_subpackages_under_graphprune(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("graphprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "graphprune/passes/__init__.py" in names and "graphprune/models/__init__.py" in names
    assert not any(n.startswith(("passes/", "models/", "tests/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # import from the unpacked wheel alone: editable-install finders removed, cwd outside the repo
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()];"
        f"sys.path.insert(0, {str(site)!r});"
        "import graphprune, graphprune.models, graphprune.passes;"
        f"assert graphprune.__file__.startswith({str(site)!r}), graphprune.__file__;"
        "assert graphprune.models.get('digits_cnn') is not None;"
        "import importlib.util; assert importlib.util.find_spec('models') is None and importlib.util.find_spec('passes') is None"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_editable_install_exposes_the_same_names():
    code = "import graphprune.models, graphprune.passes; print(graphprune.models.__file__)"
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd="/", capture_output=True, text=True).stdout
    assert out.strip().endswith("graphprune/models/__init__.py") and str(ROOT) in out
