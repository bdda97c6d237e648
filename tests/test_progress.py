"""Progress lines (issue #15 item 4): the ``Progress`` class on a fake clock, then real stages logging
done / total, rate and ETA with ``DD3G_PROGRESS_SECONDS=0``."""

import re

import pytest
import torch
from test_trajectories import FAST, make_rgba_shard

from dd3g_core import trajectories as tr
from dd3g_core.profiles import get_profile
from dd3g_core.progress import PROGRESS_SECONDS_ENV, Progress, format_duration, progress_interval
from dd3g_core.teacher import TinyTeacher

# "what: done/total unit (pct%), rate, ETA m:ss[; note]"
LINE = re.compile(
    r"^(?P<what>.+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
    r"(?P<rate>[\d.e+-]+ \w+/s|[\d.e+-]+ s/\w+), ETA (?P<eta>\d+:\d\d(:\d\d)?)(; (?P<note>.*))?$"
)


class Clock:
    """A fake monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def made(total=128, every_s=30.0, **kw):
    clock, lines = Clock(), []
    return Progress("teacher_trajectories shard 00003", total, lines.append, every_s=every_s, clock=clock, **kw), clock


# ------------------------------------------------------------------------------------------- the class


def test_first_update_logs_then_every_interval_then_done():
    p, clock = made()
    lines = []
    p.log = lines.append
    clock.now += 5.0
    assert p.update(8)  # the first update: a line at once, so the rate shows early
    assert lines == ["teacher_trajectories shard 00003: 8/128 samples (6%), 1.6 samples/s, ETA 1:15"]
    for _ in range(3):  # 27 s in all: under the 30 s interval, no line
        clock.now += 9.0
        assert not p.update(8)
    clock.now += 3.1  # 30.1 s since the last line
    assert p.update(8)
    assert lines[-1] == "teacher_trajectories shard 00003: 40/128 samples (31%), 1.14 samples/s, ETA 1:17"
    clock.now += 1.0
    assert p.update(0, force=True)  # forced (e.g. the last step)
    clock.now += 43.9
    p.update(88)
    p.close("128 written, 0 rejected")
    p.close()  # once only
    assert len(lines) == 5
    assert (
        lines[-1]
        == "teacher_trajectories shard 00003 done: 128 samples in 1:20 (1.6 samples/s); 128 written, 0 rejected"
    )


def test_rate_eta_text_unknown_total_and_notes():
    p, clock = made(total=1000, unit="steps", seconds_per_unit=True, initial=200, every_s=0)
    lines = []
    p.log = lines.append
    clock.now += 50.0
    p.update(20, note=lambda: "total 0.01234 rgb 0.00567")  # resumed at 200: the rate counts this run only
    assert lines == [
        "teacher_trajectories shard 00003: 220/1000 steps (22%), 2.5 s/step, ETA 32:30; total 0.01234 rgb 0.00567"
    ]
    p.close()
    assert lines[-1] == "teacher_trajectories shard 00003 done: 20 steps in 0:50 (2.5 s/step)"

    p, clock = made(total=None, unit="objects")  # unknown total: no percentage, no ETA
    p.log = lines.append
    clock.now += 4.0
    p.update(10)
    assert lines[-1] == "teacher_trajectories shard 00003: 10 objects, 2.5 objects/s"

    p, clock = made(total=10, unit="steps")  # auto: s/unit when slower than one unit a second
    p.log = lines.append
    clock.now += 12.0
    p.update(3)
    assert lines[-1] == "teacher_trajectories shard 00003: 3/10 steps (30%), 4 s/step, ETA 0:28"
    p, clock = made(total=10)
    p.log = lines.append
    p.update(1)  # no time has passed: the rate and ETA are unknown, not infinite
    assert lines[-1] == "teacher_trajectories shard 00003: 1/10 samples (10%), ? samples/s, ETA ?"


def test_context_manager_closes_only_on_success():
    lines = []
    with Progress("x", 2, lines.append, every_s=0, clock=Clock()) as p:
        p.update(2)
    assert lines[-1].startswith("x done: 2 samples in 0:00")
    lines.clear()
    with pytest.raises(RuntimeError), Progress("y", 2, lines.append, every_s=0, clock=Clock()) as p:
        p.update(1)
        raise RuntimeError("boom")
    assert not any("done" in line for line in lines)


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(PROGRESS_SECONDS_ENV, raising=False)
    assert progress_interval() == 30.0
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    assert progress_interval() == 0.0 and Progress("x", 1, print).every_s == 0.0
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "2.5")
    assert progress_interval() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(PROGRESS_SECONDS_ENV, bad)
        with pytest.raises(ValueError, match=PROGRESS_SECONDS_ENV):
            progress_interval()
    assert [format_duration(s) for s in (0, 55, 80, 3725, float("nan"))] == ["0:00", "0:55", "1:20", "1:02:05", "?"]


# ------------------------------------------------------------------------------------------ real stages


def _checked(lines: list[str], what: str, total: int, unit: str) -> list[re.Match]:
    """The update lines of ``what`` (each: done/total, pct, rate, ETA) and its final done line."""
    updates = [m for m in map(LINE.match, lines) if m and m["what"] == what]
    assert updates, lines
    for m in updates:
        assert int(m["total"]) == total and m["unit"] == unit
        assert int(m["pct"]) == int(100 * int(m["done"]) / total)
    assert int(updates[-1]["done"]) == total
    (done,) = [line for line in lines if line.startswith(f"{what} done: ")]
    assert re.match(rf"^{re.escape(what)} done: {total} {unit} in \d+:\d\d \(", done), done
    return updates


def test_trajectory_cache_logs_progress(tmp_path, monkeypatch):
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    teacher = TinyTeacher(seed=0).eval()
    rgba_dir = make_rgba_shard(tmp_path, n=3, bad=True)  # + 3 images rejected on input
    lines: list[str] = []
    summary, hit = tr.cache_shard(tmp_path, rgba_dir, teacher, FAST, 0, log=lines.append)
    assert not hit and summary.num_samples == 6
    updates = _checked(lines, "teacher_trajectories shard 00000", 12, "samples")  # 6 images x 2 draws
    assert [int(m["done"]) for m in updates] == [4, 12]  # batches of 4 (image, draw) pairs; a rejected image's count
    assert lines[-1].endswith("; 6 written, 3 rejected")
    lines.clear()
    assert tr.cache_shard(tmp_path, rgba_dir, teacher, FAST, 0, log=lines.append)[1] and lines == []  # a hit: silent


def test_rgba_shard_and_fit_ceiling_log_progress(tmp_path, monkeypatch):
    from dd3g_core import synthesis
    from dd3g_core.evaluation.fit import fit_gaussians

    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    lines: list[str] = []
    cfg = get_profile("smoke").rgba
    summary, _ = synthesis.synthesize_shard(tmp_path, cfg, 0, log=lines.append)
    updates = _checked(lines, "rgba_images shard 00000", len(cfg.shard_seeds(0)), "samples")
    assert len(updates) == len(cfg.shard_seeds(0))  # one seed per batch for the procedural generator
    assert lines[-1].endswith(f"; {summary.num_samples} accepted, {len(summary.manifest['rejected'])} rejected")

    teacher = TinyTeacher(seed=0).eval()
    cams = teacher.cameras()
    lines.clear()
    targets = torch.rand(2, teacher.num_views, 3, cams.resolution, cams.resolution)
    _, losses = fit_gaussians(targets, cams.viewmats, cams.Ks, (1.0, 1.0, 1.0), 64, 3, log=lines.append)
    updates = _checked(lines, "fit ceiling (2 objects)", 3, "steps")
    assert updates[-1]["note"] == f"RGB MSE {losses[-1]:.5f}"
