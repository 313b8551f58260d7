"""The adapter's training losses, batched over pairs (reference §4.3).

Points are integer patch coordinates (col, row) on the `grid`×`grid` lattice, padded to K points per
pair with a `valid` mask. The reference stores pseudo-labels as 840-frame patch corners 14·(col, row)
and converts them back with ·60/840, so its patch index, its flow targets and its noise scale are
exactly ours computed from (col, row) directly:

- patch index = row·grid + col;
- target flow = (col_t − col_s, row_t − row_s) in patch units;
- noise σ = noise · thr_t / 2 with thr_t = max over x and y of the target image's pseudo-labelled
  points of the pair (all of them, before the subsampling to max_kps), in patch units.

Descriptors are the adapter's unit-length outputs, flattened to (B, grid·grid, C) in flat-index order.
"""

from __future__ import annotations

import torch

from diysc.geometry import expected_position, flat_index, unflatten_index


def gather_points(descriptors: torch.Tensor, points: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid², C) descriptors, (B, K, 2) patch (col, row) → (B, K, C)."""
    index = flat_index(points, grid)
    return torch.gather(descriptors, 1, index[..., None].expand(-1, -1, descriptors.shape[-1]))


def info_nce(
    desc_src: torch.Tensor, desc_trg: torch.Tensor, valid: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE per pair, (B,): matched points are positives, the pair's others negatives.

    desc_src, desc_trg: (B, K, C) descriptors of the K matched points; valid: (B, K) bool;
    logit_scale: log of the inverse temperature (learned).
    """
    logits = logit_scale.exp() * desc_src @ desc_trg.transpose(1, 2)  # (B, K_src, K_trg)
    hide = torch.finfo(logits.dtype).min  # padding: never a candidate, exp() underflows to 0
    src_to_trg = logits.masked_fill(~valid[:, None, :], hide).log_softmax(dim=2)
    trg_to_src = logits.masked_fill(~valid[:, :, None], hide).log_softmax(dim=1)
    nll = -(src_to_trg.diagonal(dim1=1, dim2=2) + trg_to_src.diagonal(dim1=1, dim2=2)) / 2
    return _masked_mean(nll, valid)


def soft_argmax_flow(
    desc_src: torch.Tensor,
    desc_trg_all: torch.Tensor,
    src_points: torch.Tensor,
    grid: int,
    beta: float,
) -> torch.Tensor:
    """Predicted flow (B, K, 2) in patch units: full-softmax soft-argmax over every target patch.

    desc_src: (B, K, C) source descriptors at the points; desc_trg_all: (B, grid², C). Only the
    source rows that are scored are computed (the reference builds the whole grid²×grid² map; each
    row's softmax is independent, so the result is the same).
    """
    sim = desc_src @ desc_trg_all.transpose(1, 2)  # (B, K, grid²)
    probability = torch.softmax(sim / beta, dim=2)
    # Averaged around each row's mode (a constant: the gradient is unchanged) for fp32 precision.
    mode = unflatten_index(sim.detach().argmax(dim=2), grid).to(probability)
    expected = expected_position(probability, mode, grid)  # (B, K, 2) as (col, row)
    return expected - src_points.to(expected.dtype)


def end_point_error(flow: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance between flows over the valid points, per pair (B,)."""
    return _masked_mean(torch.linalg.vector_norm(flow - target, dim=-1), valid)


def noise_sigma(trg_extent: torch.Tensor, noise: float) -> torch.Tensor:
    """σ of the flow-target noise: `noise · thr_t / 2`, thr_t in patch units (the "2σ within thr")."""
    return noise * trg_extent / 2


def pair_losses(
    desc_src_all: torch.Tensor,
    desc_trg_all: torch.Tensor,
    src_points: torch.Tensor,
    trg_points: torch.Tensor,
    valid: torch.Tensor,
    logit_scale: torch.Tensor,
    flow_noise: torch.Tensor,
    grid: int,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sparse InfoNCE, dense EPE) per pair, each (B,).

    desc_*_all: (B, grid², C) unit descriptors; *_points: (B, K, 2) long (col, row);
    valid: (B, K) bool; flow_noise: (B, K, 2) noise added to the pseudo flow (zeros for none).
    """
    desc_src = gather_points(desc_src_all, src_points, grid)
    desc_trg = gather_points(desc_trg_all, trg_points, grid)
    sparse = info_nce(desc_src, desc_trg, valid, logit_scale)
    target = (trg_points - src_points).to(flow_noise.dtype) + flow_noise
    flow = soft_argmax_flow(desc_src, desc_trg_all, src_points, grid, beta)
    return sparse, end_point_error(flow, target, valid)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    values = torch.where(valid, values, torch.zeros_like(values))
    return values.sum(dim=1) / valid.sum(dim=1).clamp_min(1)
