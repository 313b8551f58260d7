"""What a configuration needs before it can run, checked in seconds: the dataset, the weights, a GPU.

The `data` stage, the first that runs, calls `require` so that `dvc exp run -S preset=paper` on a
machine without the internet, the weights or a GPU fails at once with one message naming each
missing thing and how to provide it, instead of failing stage by stage. `diysc check` prints the
same verdicts. Network probes are bounded (`diysc.probe`, also covering name resolution), so an
offline machine answers as fast as a connected one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import torch

from diysc import datasets, runtime
from diysc.backbones import registry
from diysc.config.schema import Params
from diysc.errors import UserError
from diysc.prerequisite import Prerequisite
from diysc.probe import answer


class PrerequisitesError(UserError, RuntimeError):
    """Things the configuration needs are missing; the message names each and how to provide it."""


def check(params: Params, sources: Mapping[str, Path] = MappingProxyType({})) -> list[Prerequisite]:
    """Every prerequisite of `params` with its verdict (no download, no model load).

    `sources`: local copies of what datasets would download, by dataset name (`diysc.datasets`)."""
    found: list[Prerequisite] = []
    for name, entry in params.datasets.items():
        found += datasets.builder(name).prerequisites(entry, sources.get(name))
    models = []  # (param, reference, kind): the configured backbones, then SAM
    for name, entry in params.features.backbones.items():
        registry.registered(name)  # an unknown name fails here, before any stage computes
        models.append((f"features.backbones.{name}.model", entry.model, name))
    if params.masks.source == "sam":
        models.append(("masks.sam_model", params.masks.sam_model, "sam"))
    real = [
        (param, ref, _probe_file(kind))
        for param, ref, kind in models
        if not registry.is_built(ref, kind)  # built locally: always available
    ]
    hub: list[str | None] = []  # why the hub cannot be used; probed once, only if a model needs it
    for param, reference, probe_file in real:
        if not hub and not _local_or_cached(reference, probe_file):
            hub.append(_hub_answer())
        found.append(_model(param, reference, probe_file, hub[0] if hub else None))
    if real:
        found.append(_gpu())
    return found


def require(
    params: Params,
    sources: Mapping[str, Path] = MappingProxyType({}),
    in_experiment: bool = False,
) -> None:
    """Raise one `PrerequisitesError` naming every missing prerequisite and its fix."""
    missing = [p for p in check(params, sources) if not p.ok]
    if not missing:
        return
    items = "; ".join(f"({i}) {p.what}: {p.how}" for i, p in enumerate(missing, 1))
    message = f"preset '{params.preset}' cannot run here, missing: {items}."
    if in_experiment:
        message += (
            " `dvc exp run` has rewritten params.yaml with this experiment's params: restore it "
            "with `git checkout params.yaml` (or `diysc compose-params`) before a plain `dvc repro`."
        )
    raise PrerequisitesError(message)


def _probe_file(kind: str) -> str:
    """A file every model of this kind has: its presence shows the model is there."""
    return "config.json" if kind == "sam" else registry.registered(kind).probe


def _model(param: str, reference: str, probe_file: str, hub_reason: str | None) -> Prerequisite:
    how = (
        f"download it where the Hugging Face hub is reachable (`hf download {reference} "
        f"--local-dir /models/{reference.rsplit('/', 1)[-1]}`), copy it here and run with "
        f"-S {param}=/models/{reference.rsplit('/', 1)[-1]}"
    )
    where = _local_or_cached(reference, probe_file)
    if where:
        return Prerequisite(f"{param}={reference}", where, how)
    if Path(reference).is_absolute() or reference.startswith("."):
        return Prerequisite(f"{param}={reference} (no such directory)", "", how)
    if hub_reason:
        what = f"{param}={reference} (not in the Hugging Face cache; hub: {hub_reason})"
        return Prerequisite(what, "", how)
    return Prerequisite(f"{param}={reference}", "the Hugging Face hub answers", how)


def _local_or_cached(reference: str, probe_file: str) -> str:
    if Path(reference).is_dir():
        return f"local directory {reference}"
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(reference, probe_file)
    except ValueError:  # not a valid hub id
        return ""
    return f"Hugging Face cache {Path(cached).parent}" if isinstance(cached, str) else ""


def _hub_answer() -> str | None:
    """Why the Hugging Face hub cannot be used, or None when it answers."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return answer(constants.ENDPOINT)


def _gpu() -> Prerequisite:
    how = (
        "run on a machine with an NVIDIA GPU and a CUDA build of torch, or set DIYSC_DEVICE=cpu "
        "to run on the CPU anyway (days at the paper's scale)"
    )
    if os.environ.get("DIYSC_DEVICE"):
        return Prerequisite("a compute device", f"DIYSC_DEVICE={os.environ['DIYSC_DEVICE']}", how)
    if runtime.pool() is not None:
        # Each stage takes a GPU of the pool when it starts: the check neither holds nor waits for one.
        pool = f"DIYSC_GPU_POOL={os.environ['DIYSC_GPU_POOL']}"
        return Prerequisite(
            "a CUDA GPU of the pool", pool if torch.cuda.is_available() else "", how
        )
    device = runtime.device()
    if device.type == "cuda":
        return Prerequisite("a CUDA GPU", str(device), how)
    return Prerequisite("a CUDA GPU (torch sees none)", "", how)
