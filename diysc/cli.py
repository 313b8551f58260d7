"""The `diysc` command line for users: info, dataset previews, evaluation, matching, tables.

Every command reports an expected error (bad input, missing file, bad param, incompatible
checkpoint) as one line and exits 1; `--debug` or `DIYSC_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import click

from diysc.errors import clean_errors

ALLOW_STAND_IN_OPTION = click.option(
    "--allow-stand-in",
    "stand_in",
    is_flag=True,
    help="Run with the offline stand-in backbones (e.g. a features.backbones model 'tiny') although their "
    "correspondences are not meaningful.",
)


@click.group()
@click.version_option(package_name="diysc")
def main() -> None:
    """DIY-SC reproducibility harness: semantic correspondence from pseudo-labels."""


@main.command()
@click.option(
    "--params",
    "params_path",
    default="params.yaml",
    show_default=True,
    help="Parameter file to resolve.",
)
@clean_errors
def info(params_path: str) -> None:
    """Print versions, the compute device and resolved paths."""
    from importlib import metadata
    from pathlib import Path

    from diysc import runtime
    from diysc.tracking import tracking_uri

    click.echo(f"diysc        {metadata.version('diysc')}")
    click.echo(f"python       {platform.python_version()} ({sys.executable})")
    for dist in ("torch", "transformers", "diffusers", "dvc", "mlflow", "numpy", "pandas"):
        try:
            click.echo(f"{dist:<12} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            click.echo(f"{dist:<12} not installed")
    dev = runtime.device()
    detail = ""
    if dev.type == "cuda":
        import torch

        detail = f" ({torch.cuda.get_device_name(dev)})"
    click.echo(f"device       {dev}{detail}")
    click.echo(f"cache        {runtime.cache_dir()}")
    click.echo(f"mlflow       {tracking_uri()}")
    _report_lock_drift()
    path = Path(params_path)
    if path.is_file():
        from diysc.config.load import load_params

        params = load_params(path)
        click.echo(f"params       {path.resolve()} (preset {params.preset})")
    else:
        click.echo(f"params       {path} not found")


@main.command("compose-params")
@click.option(
    "--conf",
    "conf_dir",
    default="conf",
    show_default=True,
    type=click.Path(exists=True, file_okay=False),
    help="Hydra config folder.",
)
@click.option("--out", default="params.yaml", show_default=True, type=click.Path(dir_okay=False))
@clean_errors
def compose_params(conf_dir: str, out: str) -> None:
    """Regenerate params.yaml from conf/ (as `dvc exp run` composes it), after editing conf/."""
    import yaml

    from diysc.config.compose import compose_text
    from diysc.config.overrides import params_from_dict
    from diysc.io import write_text

    text = compose_text(conf_dir)
    params_from_dict(yaml.safe_load(text))  # a bad conf/ fails here, before params.yaml changes
    write_text(out, text)
    click.echo(f"wrote {out} from {conf_dir}/")


@main.command()
@click.option(
    "--check", is_flag=True, help="Change nothing; exit 1 if a stage's code deps are stale."
)
@click.option(
    "--root",
    default=".",
    show_default=True,
    type=click.Path(exists=True, file_okay=False),
    help="The repository's root.",
)
@clean_errors
def deps(check: bool, root: str) -> None:
    """Write each DVC stage's code deps (its script's import closure) into dvc.yaml and
    ablations/*/dvc.yaml, leaving everything else in them as it is."""
    from diysc.stage_deps import update

    stale = update(root, check=check)
    if not stale:
        click.echo("code deps: every stage is current")
        return
    for name in stale:
        click.echo(f"{'stale' if check else 'updated'}  {name}")
    if check:
        click.echo(f"{len(stale)} stage(s) with stale code deps: run `diysc deps`", err=True)
        sys.exit(1)


def _report_lock_drift() -> None:
    from diysc.environment import lock_drift, lock_path

    lock = lock_path()
    if not lock.is_file():
        click.echo(f"lock         {lock.name} not found (not a source checkout)")
        return
    drift = lock_drift(lock)
    click.echo(f"lock         {lock.name}: {len(drift) or 'no'} package(s) differ")
    for name, locked, installed in drift:
        click.echo(f"  {name:<24} locked {locked:<16} installed {installed}")


@main.command()
@click.option("--rev", default="HEAD", show_default=True, help="Git revision to compare with.")
@clean_errors
def verify(rev: str) -> None:
    """Compare the workspace's metrics and stage outputs with a commit's (exit 1 beyond tolerance)."""
    from diysc.verify import verify as run_verify

    if not run_verify(rev, echo=click.echo):
        sys.exit(1)


@main.command()
@click.option(
    "-S",
    "--set-param",
    "hydra_overrides",
    multiple=True,
    help="Compose conf/ with this override, as `dvc exp run -S` does (e.g. -S preset=paper); "
    "without any, check params.yaml.",
)
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--conf", "conf_dir", default="conf", show_default=True, help="Hydra config folder.")
@click.option(
    "--source",
    "local_archive",
    type=click.Path(exists=True, path_type=Path),
    help="Local copy of the training dataset's download, e.g. the SPair-71k archive or folder "
    "(default for SPair-71k: $DIYSC_SPAIR_ARCHIVE).",
)
@clean_errors
def check(hydra_overrides, params_path, conf_dir, local_archive):
    """Check that a configuration can run here: dataset, model weights, GPU (in seconds).

    `diysc check -S preset=paper` answers before `dvc exp run -S preset=paper` is started.
    """
    from diysc import prerequisites
    from diysc.config.compose import compose
    from diysc.config.load import load_params
    from diysc.config.overrides import params_from_dict

    if hydra_overrides:
        params = params_from_dict(compose(conf_dir, hydra_overrides))
        source = f"{conf_dir}/ with " + " ".join(hydra_overrides)
    else:
        params, source = load_params(params_path), params_path
    click.echo(f"preset '{params.preset}' from {source}:")
    sources = {params.train_dataset: local_archive} if local_archive else {}
    found = prerequisites.check(params, sources)
    for item in found:
        click.echo(f"  {'ok' if item.ok else 'MISSING':<8}{item.what}: {item.found or item.how}")
    missing = sum(not item.ok for item in found)
    if missing:
        raise prerequisites.PrerequisitesError(
            f"{missing} of {len(found)} prerequisites missing (listed above with how to provide each)"
        )
    click.echo("everything this configuration needs is here")


@main.command("show-dataset")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="contact_sheet.png", show_default=True, help="PNG to write.")
@click.option(
    "--split",
    type=click.Choice(["trn", "val", "test"]),
    default=None,
    help="Only images of this split (default: all images).",
)
@click.option("--category", "categories", multiple=True, help="Category to show (repeatable).")
@click.option(
    "--per-category",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per category row.",
)
@click.option(
    "--size",
    default=192,
    show_default=True,
    type=click.IntRange(min=16),
    help="Thumbnail side, px.",
)
@clean_errors
def show_dataset(
    dataset: str,
    out: str,
    split: str | None,
    categories: tuple[str, ...],
    per_category: int,
    size: int,
) -> None:
    """Write a contact sheet of an SPair-layout DATASET with keypoints, bboxes and masks drawn."""
    from diysc.data.contact_sheet import contact_sheet
    from diysc.io import atomic_path

    sheet = contact_sheet(dataset, categories, split, per_category, size)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    click.echo(f"wrote {out} ({sheet.width}x{sheet.height})")


def _pipeline_path(kind: str, dataset: str) -> str:
    """The pipeline's `data/<dataset>/<kind>` folder; an error naming it (and the option that
    replaces it) when it does not exist."""
    path = Path("data") / dataset / kind
    if not path.is_dir():
        raise click.UsageError(f"{path}: no such folder (run `dvc repro`, or give --{kind})")
    return str(path)


@main.command()
@click.option(
    "--adapter",
    "adapter_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Adapter checkpoint (ours or the authors'); without it only the zero-shot baseline.",
)
@click.option(
    "--dataset",
    type=click.Path(exists=True, file_okay=False),
    help="Dataset root [default: data/<the first of eval_datasets>/dataset].",
)
@click.option(
    "--features",
    type=click.Path(exists=True, file_okay=False),
    help="Its features [default: data/<the first of eval_datasets>/features].",
)
@click.option(
    "--params",
    "params_path",
    default="params.yaml",
    show_default=True,
    help="Parameter file; its `eval` group sets split, alphas and the soft-argmax.",
)
@click.option("--set", "overrides", multiple=True, help="key=value override, e.g. eval.split=val.")
@click.option(
    "--zero-shot/--no-zero-shot",
    default=True,
    show_default=True,
    help="Also evaluate the zero-shot SD+DINO baseline.",
)
@click.option("--out", type=click.Path(dir_okay=False), help="Write the metrics JSON here.")
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False),
    help="Write PCK curves and match pictures into this folder.",
)
@ALLOW_STAND_IN_OPTION
@clean_errors
def evaluate(
    adapter_path, dataset, features, params_path, overrides, zero_shot, out, plots_dir, stand_in
):
    """PCK of an adapter checkpoint (and the zero-shot baseline) on a split of the dataset.

    The features are those of the pipeline (`dvc repro` writes data/<dataset>/features with the
    backbones that params.yaml names); the adapter must fit them, which is checked before
    evaluating.
    """
    from diysc import runtime
    from diysc.adapter.model import load_adapter
    from diysc.compatibility import check_adapter, configured, refuse_stand_ins
    from diysc.config.load import load_params
    from diysc.evaluation.run import evaluate_checkpoint, staged_outputs
    from diysc.features import FeatureStore
    from diysc.metric_keys import pck_key
    from diysc.viz import figure_note

    params = load_params(params_path, overrides)
    settings = params.eval
    dataset = dataset or _pipeline_path("dataset", params.eval_datasets[0])
    features = features or _pipeline_path("features", params.eval_datasets[0])
    store = FeatureStore(features)
    names = configured(params.features, store.group_names)
    click.echo(
        f"features: {features} ({store.feature_dims} channels), computed with "
        + ", ".join(f"{k}={model!r}" for k, (_, model) in names.items())
    )
    if adapter_path is not None:
        adapter_dims = load_adapter(adapter_path).feature_dims
        params_of = {name: key for key, (name, _) in names.items()}
        check_adapter(adapter_dims, store.group_dims, adapter_path, f"{features}", params_of)
    refuse_stand_ins(names, allowed=stand_in)
    device = runtime.device()
    metrics, results, size = evaluate_checkpoint(
        dataset, features, adapter_path, settings, device, zero_shot=zero_shot
    )
    keys = [pck_key(a) for a in settings.alphas]
    click.echo(f"{metrics['pairs']} {settings.split} pairs ({device})")
    click.echo(f"{'method':<12}{'average':<14}" + "".join(f"{k:>11}" for k in keys))
    for name in results:
        for avg in ("per_image", "per_keypoint"):
            values = "".join(f"{metrics[name][avg][k]:>11.2f}" for k in keys)
            click.echo(f"{name:<12}{avg:<14}{values}")
    note = figure_note(params.preset)
    with staged_outputs(out, plots_dir, dataset, metrics, results, settings, size, note=note):
        pass  # both files appear together, or neither changes
    if out:
        click.echo(f"metrics: {out}")
    if plots_dir:
        click.echo(f"plots: {plots_dir}")


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected x,y (pixels of the first image)") from None
    return x, y


@main.command()
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--adapter",
    "adapter_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Adapter checkpoint; without it the zero-shot SD+DINO features match.",
)
@click.option("--points", "-p", multiple=True, help="Source point x,y in IMAGE_A pixels (repeat).")
@click.option(
    "--grid",
    default=6,
    show_default=True,
    type=click.IntRange(min=1),
    help="Without --points: an N×N grid of source points over IMAGE_A.",
)
@click.option(
    "--params",
    "params_path",
    default="params.yaml",
    show_default=True,
    help="Parameter file: `features` (backbones, sizes) and `eval` (soft-argmax).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    help="key=value override, e.g. features.backbones.sd=null (DINO only).",
)
@click.option("--out", default="matches.png", show_default=True, type=click.Path(dir_okay=False))
@ALLOW_STAND_IN_OPTION
@clean_errors
def match(image_a, image_b, adapter_path, points, grid, params_path, overrides, out, stand_in):
    """Correspondences from IMAGE_A to IMAGE_B: printed, and drawn into --out.

    The backbones are those params.yaml names (`features.backbones`); they and the adapter are
    checked against each other before any feature is extracted.
    """
    import numpy as np

    from diysc import runtime, viz
    from diysc.adapter.model import load_adapter
    from diysc.compatibility import (
        backbones,
        check_adapter,
        configured,
        group_dims,
        refuse_stand_ins,
    )
    from diysc.config.load import load_params
    from diysc.data.spair import load_rgb
    from diysc.evaluation.match import match_images

    params = load_params(params_path, overrides)
    img_a, img_b = load_rgb(image_a), load_rgb(image_b)
    source = np.array([_point(p) for p in points]) if points else None
    used = backbones(params.features)
    for backbone in used:
        click.echo(f"backbone: {backbone.describe()}")
    adapter = None
    if adapter_path is not None:
        adapter = load_adapter(adapter_path)
        params_of = {b.name: b.param for b in used}
        dims = group_dims(used)
        check_adapter(adapter.feature_dims, dims, adapter_path, "the backbones", params_of)
    refuse_stand_ins(configured(params.features), allowed=stand_in)
    try:
        found = match_images(
            img_a, img_b, params.features, params.eval, adapter, source, grid, runtime.device()
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"{len(found.src_xy)} matches ({found.method}), pixels of each image:")
    for (xa, ya), (xb, yb) in zip(found.src_xy, found.trg_xy, strict=True):
        click.echo(f"  ({xa:8.1f}, {ya:8.1f}) -> ({xb:8.1f}, {yb:8.1f})")
    viz.draw_matches(
        img_a,
        img_b,
        found.src_xy,
        found.trg_xy,
        out,
        title=f"{found.method}: {image_a} → {image_b}",
    )
    click.echo(f"picture: {out}")
