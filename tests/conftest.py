"""Shared test fixtures."""

import os

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
