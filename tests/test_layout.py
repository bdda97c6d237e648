"""Repository rules that users and CI rely on."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dd3g_core_never_imports_dagster():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "dd3g_core").rglob("*.py")
        if p.name != "__main__.py"
    )
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "bad = [m for m in sys.modules if m.startswith('dagster')]\nassert not bad, bad\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for p in (ROOT / "dd3g_core").rglob("*.py"):
        # not even dagster_pipes: the trainer takes a reporter, pipelines/pipes_train.py passes a Pipes one
        assert not re.search(r"^\s*(import|from)\s+dagster", p.read_text(), re.M), p


def test_required_top_level_exists():
    for name in [
        "pyproject.toml",
        "dd3g_core",
        "pipelines",
        "assets",
        "workspace.yaml",
        "Dockerfile",
        "tests",
        "benchmarks",
        "docs",
        "README.md",
        ".ci/run",
    ]:
        assert (ROOT / name).exists(), name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    i = lines.index("<!-- readme-test-command -->")
    assert lines[i + 1].startswith("```") and "pytest" in lines[i + 2]
    assert "readme-test-command" in (ROOT / ".ci/run").read_text()


def test_torch_is_pinned():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch==\d+\.\d+\.\d+"', text)
    assert "torch==" in (ROOT / "scripts/bootstrap.sh").read_text()


def test_no_pickle_loading_in_library():
    for p in list((ROOT / "dd3g_core").rglob("*.py")) + list((ROOT / "pipelines").rglob("*.py")):
        text = p.read_text()
        assert "allow_pickle=True" not in text, p
        assert not re.search(r"^\s*import pickle", text, re.M), p
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), p


def test_core_third_party_imports_are_declared_dependencies():
    """The run command installs only `.[pipeline]`: every third-party module dd3g_core and
    pipelines import at module or function level must be a declared (non-dev) dependency."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = " ".join(deps["dependencies"] + deps["optional-dependencies"]["pipeline"]).lower()
    optional = {"rembg", "onnx", "onnxruntime", "dagster_celery"}  # extras (matting; celery: pipelines.scale_out only)
    dist_of = {"PIL": "pillow", "yaml": "pyyaml", "imageio_ffmpeg": "imageio-ffmpeg", "dagster_pipes": "dagster-pipes"}
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for p in list((ROOT / "dd3g_core").rglob("*.py")) + list((ROOT / "pipelines").rglob("*.py")):
        for m in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", p.read_text(), re.M):
            top = m.group(1)
            if top in stdlib or top in {"dd3g_core", "pipelines", "__future__"} or top in optional:
                continue
            found.add(dist_of.get(top, top).replace("_", "-").lower())
    missing = sorted(d for d in found if d not in declared)
    assert not missing, f"imported but not declared in pyproject dependencies: {missing}"
