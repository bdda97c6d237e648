"""Shared test fixtures."""

import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    """Modules with a test marked ``slow`` run first, each module still in one piece.

    The README runs the suite as ``pytest -n 2`` with ``--dist loadfile`` (pyproject.toml): each
    module goes whole to one of two workers, in this order. With the few long modules (Dagster jobs
    through the CLI, trainers, the browser) first and the many short ones after, the two workers end
    within a short module of each other; in xdist's own order (most tests first) the long modules
    came last and one worker ran them alone.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group stays


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
