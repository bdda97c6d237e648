"""Shared test fixtures."""

import os
import shutil

import pytest


@pytest.fixture(autouse=True)
def _forced_render_backend(monkeypatch):
    """``DD3G_TEST_BACKEND=reference`` runs the world/export tests on the dense reference
    compositor instead of the compiled rasterizer (to tell a kernel bug from a world bug)."""
    forced = os.environ.get("DD3G_TEST_BACKEND")
    if forced:
        import dd3g_core.render.views as views

        real = views.render

        def render(*args, backend="auto", **kwargs):
            return real(*args, backend=forced if backend == "auto" else backend, **kwargs)

        monkeypatch.setattr(views, "render", render)


@pytest.fixture(scope="module", autouse=True)
def _drop_module_temp_dirs(request, tmp_path_factory):
    """Remove the temp dirs a test module made (teachers, caches, checkpoints, Dagster
    homes) once the module is done, unless one of its tests failed.

    The suite writes about 2.6 GB in all; kept to the end, that filled a CI disk. Function
    ``tmp_path`` dirs of passing tests are already dropped by ``tmp_path_retention_policy``
    in pyproject.toml; this does the same for ``tmp_path_factory.mktemp`` dirs.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failures_before = request.session.testsfailed
    yield
    if request.session.testsfailed == failures_before:
        for path in set(base.iterdir()) - before:
            if path.is_symlink():  # pytest's "<name>current" link to the newest numbered dir
                path.unlink(missing_ok=True)
            else:
                shutil.rmtree(path, ignore_errors=True)
