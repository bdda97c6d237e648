"""``rgba_images``: RGBA object images as webdataset shards (stage 1)."""


import dagster as dg

from dd3g_core import synthesis
from dd3g_core.shards import validate_shards

from ..preview import image_markdown
from ..resources import DD3GSettings


def _config(settings: DD3GSettings) -> synthesis.ProceduralRGBAConfig:
    if settings.profile == "full":
        raise NotImplementedError("the full profile's SDXL synthesis lands with issue 4; use profile 'tiny'")
    return synthesis.PRESETS[settings.profile]


@dg.asset(
    code_version=synthesis.CODE_VERSION,
    group_name="data",
    kinds={"webdataset"},
    description="RGBA object images (procedural world in the tiny profile), atomically written shards + manifest.",
)
def rgba_images(context: dg.AssetExecutionContext, settings: DD3GSettings) -> dg.MaterializeResult:
    config = _config(settings)
    summary, cache_hit = synthesis.synthesize_rgba(settings.root(), config)
    context.log.info(f"{'reused' if cache_hit else 'wrote'} {summary.num_samples} samples in {summary.directory}")
    data_version = synthesis.stable_hash([f["sha256"] for f in summary.manifest["files"]])
    return dg.MaterializeResult(
        data_version=dg.DataVersion(data_version),
        metadata={
            "path": dg.MetadataValue.path(str(summary.directory)),
            "num_samples": summary.num_samples,
            "num_shards": summary.manifest["num_shards"],
            "cache_hit": cache_hit,
            "config": dg.MetadataValue.json(summary.manifest["config"]),
            "preview": image_markdown(synthesis.preview_grid(summary), "first samples"),
        },
    )


@dg.asset_check(asset=rgba_images, description="Every shard matches the manifest (size, sha256, counts).")
def rgba_images_checks(settings: DD3GSettings) -> dg.AssetCheckResult:
    config = _config(settings)
    directory = synthesis.stage_dir(settings.root(), config)
    try:
        summary = validate_shards(directory)
    except ValueError as e:
        return dg.AssetCheckResult(passed=False, metadata={"error": str(e)})
    counted = sum(f["samples"] for f in summary.manifest["files"])
    return dg.AssetCheckResult(
        passed=counted == summary.num_samples == config.num_samples,
        metadata={"samples": counted, "expected": config.num_samples},
    )
