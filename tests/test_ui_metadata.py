"""What the Dagster UI shows (``pipelines/preview.py``): inline PNG previews in markdown metadata, of a size a
person can judge and within the event log's byte budget; the student's final losses as numbers.

The shard assets run in-process on the smoke profile with a random-weight TinyTeacher (as in
``tests/test_pipeline.py``); the student's pictures are made from the shipped ``assets/models/tiny-pepd``
and its teacher, the loss plot from a made-up curve.
"""

import warnings
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest

from dd3g_core.teacher import TinyTeacher, describe_teacher_folder
from pipelines.assets import rgba_images, teacher, teacher_trajectories
from pipelines.io_managers import StageRecordIOManager
from pipelines.preview import INLINE_MARKDOWN_CHARS, MAX_PREVIEW_BYTES, TILE, inline_images, png_bytes
from pipelines.resources import DD3GSettings
from pipelines.student_preview import STUDENT_AZIMUTHS, loss_curve_image, student_ui_metadata

warnings.filterwarnings("ignore", category=dg.BetaWarning)
ROOT = Path(__file__).resolve().parents[1]
PAD = 2  # px between tiles (pipelines.preview.tile_grid)


def grid_size(rows: int, cols: int, tile: int = TILE) -> tuple[int, int]:  # PIL (width, height)
    return cols * tile + (cols - 1) * PAD, rows * tile + (rows - 1) * PAD


def one_png(value) -> tuple[str, object, int]:
    """The single inline PNG of a markdown metadata value: (title, image, PNG bytes)."""
    assert isinstance(value, dg.MarkdownMetadataValue), type(value)
    assert "](data:image/png;base64," in value.value
    [(title, image)] = inline_images(value.value)
    return title, image, len(png_bytes(image))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "tiny-random"
    TinyTeacher(seed=0).save_pretrained(path)
    return path


def test_shard_assets_show_inline_previews(tmp_path, teacher_dir):
    settings = DD3GSettings(data_root=str(tmp_path / "data"), profile="smoke", teacher_path=str(teacher_dir))
    res = {"settings": settings, "io_manager": StageRecordIOManager(settings=settings)}
    result = dg.materialize([rgba_images, teacher, teacher_trajectories], resources=res, partition_key="00001")
    assert result.success
    mats = {
        m.asset_key.to_user_string(): m.metadata
        for node in ("rgba_images", "teacher_trajectories")
        for m in result.asset_materializations_for_node(node)
    }
    # smoke: 4 images of 32 px per shard -> one group of 4, on white then on black, each upscaled to 128 px
    title, image, size = one_png(mats["rgba_images"]["preview"])
    assert title == "rgba_images 00001" and image.size == grid_size(2, 4) and image.mode == "RGB"
    top, bottom = np.asarray(image)[:TILE, :TILE], np.asarray(image)[TILE + PAD :, :TILE]
    assert top[0, 0].tolist() == [255, 255, 255] and bottom[0, 0].tolist() == [0, 0, 0]  # alpha shows
    assert size < MAX_PREVIEW_BYTES
    # smoke: 2 noise draws -> 8 samples; 4 rows of input + the tiny teacher's 4 views of 32 px, at 128 px
    title, image, size = one_png(mats["teacher_trajectories"]["preview"])
    assert title == "teacher_trajectories 00001" and image.size == grid_size(4, 5) and size < MAX_PREVIEW_BYTES
    assert "samples" in mats["teacher_trajectories"]["preview"].value.split(")", 1)[-1]  # the caption


def test_student_preview_and_loss_plot_on_the_shipped_student(tmp_path):
    teacher_folder = ROOT / "assets" / "models" / "tiny-teacher"
    settings = DD3GSettings(data_root=str(tmp_path / "data"), profile="tiny", teacher_path="")
    curve = [[s, 0.5 * (s + 10) ** -0.5 + 0.01] for s in range(10, 1510, 10)]
    trained = SimpleNamespace(
        record={"path": str(ROOT / "assets" / "models" / "tiny-pepd")},
        metadata={  # as train_student passes them on: raw values and MetadataValues
            "final_loss": curve[-1][1],
            "final_rgb_mse": dg.MetadataValue.float(0.0123),
            "loss_curve": dg.MetadataValue.json(curve),
        },
    )
    record = describe_teacher_folder(teacher_folder, kind="tiny", hash_cache=settings.hash_cache())
    meta = student_ui_metadata(settings, record, trained, log=None)
    assert "preview_error" not in meta, meta.get("preview_error")
    assert meta["final_loss"] == dg.MetadataValue.float(curve[-1][1])
    assert meta["final_rgb_mse"] == dg.MetadataValue.float(0.0123)
    # 2 held-out objects x (white, black) rows; input + 6 azimuths at display resolution (4 x 32 = 128 px)
    title, image, size = one_png(meta["student_views"])
    assert title == "student views" and image.size == grid_size(4, 1 + len(STUDENT_AZIMUTHS), 128)
    assert size < MAX_PREVIEW_BYTES
    pixels = np.asarray(image.convert("RGB"))
    student_white = pixels[:TILE, TILE + PAD : 2 * TILE + PAD]
    assert student_white.min() < 200 and np.median(student_white) > 250  # an object, on white
    title, image, size = one_png(meta["loss_curve_plot"])
    assert image.size == (640, 320) and size < 50_000
    assert (np.asarray(image.convert("RGB")) == [31, 119, 180]).all(-1).sum() > 200  # the curve is drawn
    # short enough for the UI to show inline in the metadata table (longer markdown hides behind a click)
    assert len(meta["loss_sparkline"].value) < INLINE_MARKDOWN_CHARS
    assert one_png(meta["loss_sparkline"])[1].size == (240, 40)


def test_loss_plot_edge_cases_and_byte_budget():
    assert loss_curve_image([]).shape == (320, 640, 3)  # nothing logged: a note, not a crash
    assert loss_curve_image([[6, 0.3]]).shape == (320, 640, 3)
    assert loss_curve_image([[1, float("nan")], [2, 1e-3], [3, 1e-6]], width=400, height=200).shape == (200, 400, 3)
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)  # incompressible
    assert len(png_bytes(noise, max_bytes=10**7)) > MAX_PREVIEW_BYTES
    assert len(png_bytes(noise)) <= MAX_PREVIEW_BYTES


def test_every_asset_and_check_says_what_it_is():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    short = {
        key.to_user_string(): graph.get(key).description
        for key in graph.get_all_asset_keys()
        if len(graph.get(key).description or "") < 60
    }
    assert not short, f"assets without a clear description: {short}"
    checks = {key.name: graph.get(key).description for key in graph.asset_check_keys}
    missing = {name: d for name, d in checks.items() if len(d or "") < 40}
    assert checks and not missing, f"checks without a clear description: {missing}"
