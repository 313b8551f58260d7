"""The DIY-SC adapter: one bottleneck residual block per feature group, softmax-mixed.

Architecture and state-dict names follow the authors' `AggregationNetwork` (Detectron2-style
`BottleneckBlock`), so their released checkpoints load strictly:

    logit_scale, self_logit_scale, mixing_weights,
    bottleneck_layers.<group>.<block>.conv{1,2,3}.weight / .norm.weight / .norm.bias,
    bottleneck_layers.<group>.<block>.shortcut.weight / .norm.weight / .norm.bias  (when in != out)

Input: the raw concatenated features (B, sum(feature_dims), H, W), groups in the order
[SD s3, SD s4, SD s5, DINO] (or [DINO] alone). Output: (B, channels, H, W), L2-normalised per patch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diysc.errors import UserError

GROUP_NORM_GROUPS = 32
NORMALISE_EPS = 1e-10  # the reference's `normalize_feats` epsilon


class AdapterCheckpointError(UserError, ValueError):
    """An adapter file is unreadable or not an adapter state dict; names the file and key."""


class ConvNorm(nn.Conv2d):
    """Bias-free convolution followed by GroupNorm; the norm is a child named `norm`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.norm = nn.GroupNorm(GROUP_NORM_GROUPS, out_channels)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # "MSRA fill"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 (GN after each, ReLU between), plus a (projected) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1)
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)


class Adapter(nn.Module):
    """Refines raw backbone features into `channels`-dimensional unit descriptors per patch."""

    def __init__(
        self,
        feature_dims: Sequence[int],
        channels: int = 768,
        num_blocks: int = 1,
        temperature: float = 0.07,
    ):
        super().__init__()
        if channels % (4 * GROUP_NORM_GROUPS) != 0:
            raise ValueError(
                f"channels={channels}: must be a multiple of {4 * GROUP_NORM_GROUPS} "
                f"(GroupNorm({GROUP_NORM_GROUPS}) on the bottleneck width channels/4)"
            )
        self.feature_dims = tuple(int(d) for d in feature_dims)
        self.channels = channels
        self.num_blocks = num_blocks
        width = channels // 4
        # The contrastive loss's learned inverse temperature (log-space), as in CLIP.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))
        # Present in the authors' state dict but never used; frozen so it gets no gradient
        # (the reference's AdamW skips it too, since its grad stays None).
        self.self_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)), requires_grad=False)
        self.bottleneck_layers = nn.ModuleList(
            nn.Sequential(
                *(
                    Bottleneck(dim if i == 0 else channels, channels, width)
                    for i in range(num_blocks)
                )
            )
            for dim in self.feature_dims
        )
        self.mixing_weights = nn.Parameter(torch.ones(len(self.feature_dims)))

    def mix(self, features: torch.Tensor) -> torch.Tensor:
        """(B, sum(feature_dims), H, W) raw features → (B, channels, H, W), before normalisation."""
        if features.shape[1] != sum(self.feature_dims):
            raise ValueError(
                f"adapter expects {sum(self.feature_dims)} input channels "
                f"(groups {list(self.feature_dims)}), got {features.shape[1]}"
            )
        weights = torch.softmax(self.mixing_weights, dim=0)
        groups = torch.split(features, self.feature_dims, dim=1)
        return sum(
            w * layer(x)
            for w, layer, x in zip(weights, self.bottleneck_layers, groups, strict=True)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Unit-length descriptors (B, channels, H, W); cosine similarity is a dot product."""
        return F.normalize(self.mix(features), dim=1, eps=NORMALISE_EPS)


def adapter_config(state: Mapping[str, torch.Tensor], source: str = "state dict") -> dict:
    """Infer `Adapter(**config)` arguments from a state dict with the official key names."""

    def tensor(key: str, ndim: int, what: str) -> torch.Tensor:
        if key not in state:
            raise AdapterCheckpointError(
                f"{source}: not an adapter state dict (missing key '{key}', expected {what})"
            )
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.ndim != ndim:
            found = (
                f"a {value.ndim}-d tensor of shape {tuple(value.shape)}"
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            raise AdapterCheckpointError(f"{source}: key '{key}' must be {what}, found {found}")
        return value

    for key in ("logit_scale", "self_logit_scale"):
        tensor(key, 0, "a 0-d tensor (a scalar)")
    groups = tensor("mixing_weights", 1, "a 1-d tensor with one weight per feature group")
    if groups.shape[0] < 1:
        raise AdapterCheckpointError(f"{source}: key 'mixing_weights' is empty (no feature group)")
    conv = "a 4-d convolution weight (out, in, k, k)"
    feature_dims = [
        int(tensor(f"bottleneck_layers.{g}.0.conv1.weight", 4, conv).shape[1])
        for g in range(groups.shape[0])
    ]
    blocks = {int(key.split(".")[2]) for key in state if key.startswith("bottleneck_layers.0.")}
    channels = int(tensor("bottleneck_layers.0.0.conv3.weight", 4, conv).shape[0])
    return {"feature_dims": feature_dims, "channels": channels, "num_blocks": len(blocks)}


def load_adapter(path: str | Path, map_location: str | torch.device = "cpu") -> Adapter:
    """Build an `Adapter` from a state-dict file (ours or the authors'), loaded strictly, in eval mode.

    The file is read with `weights_only=True` (a pickle that would run code is refused); anything
    that is not a complete adapter state dict is an `AdapterCheckpointError` naming file and key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        detail = " ".join(str(err).split())[:300]
        raise AdapterCheckpointError(
            f"{path}: cannot be read as a torch state dict (weights only): {detail}"
        ) from None
    if not isinstance(state, Mapping):
        raise AdapterCheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    try:
        model = Adapter(**adapter_config(state, str(path)))
    except ValueError as err:  # e.g. channels that GroupNorm cannot split
        if isinstance(err, AdapterCheckpointError):
            raise
        raise AdapterCheckpointError(f"{path}: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())  # one line
        raise AdapterCheckpointError(
            f"{path}: does not match the adapter it describes: {detail}"
        ) from None
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """All parameters, frozen ones included (the figure the reference reports)."""
    return sum(p.numel() for p in model.parameters())
