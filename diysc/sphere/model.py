"""The spherical mapper of SphericalMaps (Mariotti et al., CVPR 2024) and its training decoder.

`SphereMapper` maps frozen DINO patch tokens to unit 3-vectors:
Linear(D→hidden) → GELU → one pre-LN ViT block (global self-attention) → Linear(hidden→3) → L2-norm.
It is an `nn.Sequential`, so its state dict has exactly the key names of the reference's
`sphere_mapper` (`0.*`, `2.norm1.*`, `2.attn.qkv.weight`, …, `3.*`); a SphericalMaps checkpoint
is these keys prefixed with `sphere_mapper.`.

`PrototypeDecoder` rebuilds a DINO feature from a sphere point and a category one-hot; it exists
only for the reconstruction loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diysc.errors import UserError

REFERENCE_PREFIX = "sphere_mapper."  # SphericalMaps / DIY-SC checkpoints


class CheckpointError(UserError, ValueError):
    """A mapper checkpoint cannot be loaded; the message names the file and the keys."""


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # qkv_bias=False, as the reference
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # scale head_dim^-1/2
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-LN transformer block (timm/DINO `Block` layout and key names)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SphereMapper(nn.Sequential):
    """(B, N, D) DINO tokens → (B, N, 3) unit vectors; attention runs across all N tokens."""

    def __init__(self, in_dim: int = 768, hidden: int = 384, heads: int = 6):
        if hidden % heads:
            raise ValueError(f"heads ({heads}) must divide hidden ({hidden})")
        super().__init__(
            nn.Linear(in_dim, hidden), nn.GELU(), Block(hidden, heads), nn.Linear(hidden, 3)
        )
        self.in_dim, self.hidden, self.heads = in_dim, hidden, heads

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(tokens), dim=-1)


def init_mapper(in_dim: int, hidden: int, heads: int, seed: int) -> SphereMapper:
    """The mapper's random initialisation for `seed`: the start of training, and the 'before' sphere."""
    torch.manual_seed(seed)
    return SphereMapper(in_dim, hidden, heads)


class CrossAttentionBlock(nn.Module):
    """Pre-LN block whose attention reads keys/values from a conditioning sequence."""

    def __init__(self, dim: int, cond_dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(cond_dim, dim, bias=False)
        self.v = nn.Linear(cond_dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        m = cond.shape[1]
        q = self.q(self.norm1(x)).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = self.k(cond).view(b, m, self.heads, c // self.heads).transpose(1, 2)
        v = self.v(cond).view(b, m, self.heads, c // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class PrototypeDecoder(nn.Module):
    """Sphere point + category one-hot → reconstructed DINO feature (training only).

    As in the reference: a Linear(3→D) lift, then one cross-attention block applied `depth` times
    (shared weights), attending to the single one-hot token of the image's category. With one key
    the attention weights are 1, so the category acts through the value projection.
    """

    def __init__(self, feat_dim: int, n_categories: int, depth: int = 2, head_dim: int = 64):
        super().__init__()
        heads = max(1, feat_dim // head_dim)
        if feat_dim % heads:
            raise ValueError(f"feature dim {feat_dim} is not divisible into {heads} heads")
        self.n_categories, self.depth = n_categories, depth
        self.proj = nn.Linear(3, feat_dim)
        self.block = CrossAttentionBlock(feat_dim, n_categories, heads)

    def forward(self, sphere: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """sphere (B, N, 3), category (B,) long → (B, N, D)."""
        cond = F.one_hot(category, self.n_categories).to(sphere.dtype).unsqueeze(1)
        x = self.proj(sphere)
        for _ in range(self.depth):
            x = self.block(x, cond)
        return x


# --- checkpoints ------------------------------------------------------------------------------


def mapper_state(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain `SphereMapper` state dict from either format.

    A SphericalMaps checkpoint holds `sphere_mapper.*`, `prototypes.*` and a `sphere.weight` buffer;
    only the mapper keys are kept, prefix stripped. Anything else is taken as a plain state dict.
    """
    if any(k.startswith(REFERENCE_PREFIX) for k in raw):
        return {
            k[len(REFERENCE_PREFIX) :]: v for k, v in raw.items() if k.startswith(REFERENCE_PREFIX)
        }
    return dict(raw)


def read_mapper_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: sphere mapper checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors come in many types
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from None
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected a state dict (name → tensor)")
    return mapper_state(raw)


def load_mapper(path: str | Path, in_dim: int, hidden: int, heads: int) -> SphereMapper:
    """Build a `SphereMapper` and load a checkpoint into it, checking every key and shape."""
    mapper = SphereMapper(in_dim, hidden, heads)
    state = read_mapper_state(path)
    check_state(mapper, state, path)
    mapper.load_state_dict(state)
    return mapper.eval()


def check_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Raise `CheckpointError` naming the file and every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append("wrong shapes [" + "; ".join(shapes) + "]")
    if problems:
        raise CheckpointError(
            f"{path}: not a sphere mapper checkpoint for this configuration "
            f"(in_dim, hidden, heads): " + ", ".join(problems)
        )
