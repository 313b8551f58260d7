"""The adapter: architecture and parameter counts, the authors' checkpoint, losses, training data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from diysc.adapter.data import FeatureBank, PairTable, pairs_from_labels, sample_with_replacement
from diysc.adapter.losses import (
    end_point_error,
    info_nce,
    noise_sigma,
    pair_losses,
    soft_argmax_flow,
)
from diysc.adapter.model import Adapter, count_parameters, load_adapter

SD_DINO = [640, 1280, 1280, 768]


def reference_forward(state: dict, x: torch.Tensor, feature_dims: list[int]) -> torch.Tensor:
    """The adapter written out with plain torch ops from a state dict (official key names)."""

    def conv_norm(t, prefix, padding):
        t = F.conv2d(t, state[f"{prefix}.weight"], padding=padding)
        return F.group_norm(t, 32, state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"])

    weights = torch.softmax(state["mixing_weights"], dim=0)
    mixed, start = 0, 0
    for g, dim in enumerate(feature_dims):
        h = x[:, start : start + dim]
        start += dim
        block = 0
        while f"bottleneck_layers.{g}.{block}.conv1.weight" in state:
            p = f"bottleneck_layers.{g}.{block}"
            y = F.relu(conv_norm(h, f"{p}.conv1", 0))
            y = F.relu(conv_norm(y, f"{p}.conv2", 1))
            y = conv_norm(y, f"{p}.conv3", 0)
            skip = conv_norm(h, f"{p}.shortcut", 0) if f"{p}.shortcut.weight" in state else h
            h = F.relu(y + skip)
            block += 1
        mixed = mixed + weights[g] * h
    return mixed / mixed.norm(dim=1, keepdim=True).clamp_min(1e-10)


# --- model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims, channels, expected",
    [
        (SD_DINO, 768, 5_150_214),
        ([768], 768, 628_995),
        ([768], 384, 490_371),
        ([768], 128, 136_835),
        (SD_DINO, 384, 2_391_558),
    ],
)
def test_parameter_counts_match_the_reference(dims, channels, expected):
    assert count_parameters(Adapter(dims, channels)) == expected


def test_group_blocks_and_shortcuts_follow_the_reference_layout():
    state = Adapter(SD_DINO, 768).state_dict()
    assert state["mixing_weights"].shape == (4,)
    assert torch.allclose(torch.softmax(state["mixing_weights"], 0), torch.full((4,), 0.25))
    assert state["logit_scale"].item() == pytest.approx(math.log(1 / 0.07))
    assert state["self_logit_scale"].item() == pytest.approx(math.log(10))
    assert state["bottleneck_layers.0.0.conv1.weight"].shape == (192, 640, 1, 1)
    assert state["bottleneck_layers.1.0.conv2.weight"].shape == (192, 192, 3, 3)
    assert state["bottleneck_layers.2.0.shortcut.weight"].shape == (768, 1280, 1, 1)
    assert "bottleneck_layers.3.0.shortcut.weight" not in state  # DINO 768 → 768: identity


def test_official_checkpoint_loads_strictly_and_matches_a_hand_written_forward(
    official_dino_adapter,
):
    model = load_adapter(official_dino_adapter)
    official = torch.load(official_dino_adapter, map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(official)
    assert model.feature_dims == (768,) and model.channels == 768 and model.num_blocks == 1
    assert count_parameters(model) == 628_995
    assert model.logit_scale.item() == pytest.approx(3.6654, abs=1e-4)
    x = torch.randn(2, 768, 7, 7, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        out = model(x)
    expected = reference_forward(official, x, [768])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert (out >= 0).all()  # final ReLU: descriptors are non-negative
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 7, 7))


def test_sd_dino_forward_matches_the_hand_written_one_and_round_trips(tmp_path):
    torch.manual_seed(0)
    dims = [48, 80, 80, 128]
    model = Adapter(dims, channels=128, num_blocks=2)
    with torch.no_grad():
        model.mixing_weights.copy_(torch.tensor([0.3, -1.0, 0.5, 2.0]))
        for name, p in model.named_parameters():
            if name.endswith("norm.bias"):
                p.normal_(0, 0.1)
    x = torch.randn(1, sum(dims), 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), reference_forward(model.state_dict(), x, dims), rtol=1e-4, atol=1e-5
        )
    torch.save(model.state_dict(), tmp_path / "a.pth")
    loaded = load_adapter(tmp_path / "a.pth")
    assert (loaded.feature_dims, loaded.channels, loaded.num_blocks) == (tuple(dims), 128, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_load_adapter_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_adapter(tmp_path / "nothing.pth")
    state = Adapter([256], 128).state_dict()
    broken = {k: v for k, v in state.items() if k != "mixing_weights"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth.*mixing_weights"):
        load_adapter(tmp_path / "broken.pth")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth.*extra\.weight"):
        load_adapter(tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="input channels"):
        Adapter([256], 128)(torch.zeros(1, 255, 2, 2))


# --- losses -----------------------------------------------------------------------------------


def test_info_nce_on_a_hand_computed_case():
    c = 10.0
    src = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    trg = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # logits c·src·trgᵀ = [[c, c], [0, 0]]: rows give log 2 each; columns log(1+e^−c), log(1+e^c).
    expected = (math.log(2) + (math.log1p(math.exp(-c)) + math.log1p(math.exp(c))) / 2) / 2
    loss = info_nce(src, trg, torch.ones(1, 2, dtype=torch.bool), torch.tensor(math.log(c)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_clip_loss_and_ignores_padding():
    g = torch.Generator().manual_seed(1)
    src = F.normalize(torch.randn(1, 5, 8, generator=g), dim=-1)
    trg = F.normalize(torch.randn(1, 5, 8, generator=g), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))
    logits = scale.exp() * src[0] @ trg[0].T
    labels = torch.arange(5)
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert info_nce(src, trg, torch.ones(1, 5, dtype=torch.bool), scale).item() == pytest.approx(
        clip.item()
    )
    padded_src = torch.cat([src, torch.randn(1, 2, 8, generator=g)], dim=1)
    padded_trg = torch.cat([trg, torch.randn(1, 2, 8, generator=g)], dim=1)
    valid = torch.tensor([[True] * 5 + [False] * 2])
    assert info_nce(padded_src, padded_trg, valid, scale).item() == pytest.approx(clip.item())


def test_soft_argmax_flow_and_epe_on_a_hand_computed_case():
    grid = 2
    trg_all = torch.eye(4)[None]  # patch k (flat index) has descriptor e_k
    src = torch.eye(4)[3][None, None]  # looks like patch (col 1, row 1)
    src_point = torch.tensor([[[0, 0]]])
    e = math.e
    # β = 1: softmax over sims [0, 0, 0, 1] = [1, 1, 1, e] / (3 + e); E[col] = E[row] = (1 + e)/(3 + e)
    flow = soft_argmax_flow(src, trg_all, src_point, grid, beta=1.0)
    torch.testing.assert_close(flow, torch.full((1, 1, 2), (1 + e) / (3 + e)))
    target = torch.tensor([[[1.0, 1.0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    epe = end_point_error(flow, target, valid)
    assert epe.item() == pytest.approx(math.sqrt(2) * 2 / (3 + e), rel=1e-6)
    # β = 0.02 is all but a hard argmax
    sharp = soft_argmax_flow(src, trg_all, src_point, grid, beta=0.02)
    torch.testing.assert_close(sharp, torch.ones(1, 1, 2))


def test_soft_argmax_flow_in_float32_agrees_with_float64():
    # Descriptors on a 1/16 lattice, so the similarities are exact in both precisions and only
    # the soft-argmax itself differs; averaging absolute coordinates 0…59 loses ~2e-4 patch here.
    grid, gen = 60, torch.Generator().manual_seed(0)
    desc_trg = torch.randint(-4, 5, (1, grid * grid, 8), generator=gen) / 16
    desc_src = torch.randint(-4, 5, (1, 100, 8), generator=gen) / 16
    points = torch.randint(0, grid, (1, 100, 2), generator=gen)
    single = soft_argmax_flow(desc_src, desc_trg, points, grid, beta=0.02)
    double = soft_argmax_flow(desc_src.double(), desc_trg.double(), points, grid, beta=0.02)
    assert (single.double() - double).abs().max().item() < 3e-5


def test_pair_losses_dense_target_is_pseudo_flow_plus_noise():
    grid = 2
    desc = torch.eye(4)[None]  # both images: patch k ↦ e_k, so patch p matches patch p exactly
    src_points = torch.tensor([[[0, 0], [1, 0]]])
    trg_points = torch.tensor([[[1, 1], [1, 0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    noise = torch.tensor([[[0.0, 0.0], [0.3, -0.4]]])
    _, dense = pair_losses(
        desc, desc, src_points, trg_points, valid, torch.tensor(0.0), noise, grid, beta=0.02
    )
    # predicted flows ≈ 0 (each patch finds itself); targets (1, 1) and (0, 0) + (0.3, −0.4)
    assert dense.item() == pytest.approx((math.sqrt(2) + 0.5) / 2, rel=1e-4)


def test_noise_sigma_is_a_twentieth_of_the_target_extent():
    assert noise_sigma(torch.tensor([7.0, 40.0]), 0.1).tolist() == pytest.approx([0.35, 2.0])


# --- training data ----------------------------------------------------------------------------


def labels_table() -> pd.DataFrame:
    rows = [  # pair, src, trg, src_col, src_row, trg_col, trg_row
        (0, "a", "b", 1, 2, 3, 4),
        (0, "a", "b", 5, 1, 2, 9),
        (0, "a", "b", 0, 0, 7, 1),
        (1, "b", "c", 4, 4, 6, 2),
    ]
    return pd.DataFrame(
        rows, columns=["pair", "src", "trg", "src_col", "src_row", "trg_col", "trg_row"]
    )


def test_pairs_keep_at_most_max_kps_whole_correspondences_and_the_full_extent():
    images: dict = {}
    table = pairs_from_labels(labels_table(), "car", images, max_kps=2, seed=0)
    assert images == {("car", "a"): 0, ("car", "b"): 1, ("car", "c"): 2}
    assert table.src_image.tolist() == [0, 1] and table.trg_image.tolist() == [1, 2]
    assert table.valid.tolist() == [[True, True], [True, False]]
    all_rows = {(1, 2, 3, 4), (5, 1, 2, 9), (0, 0, 7, 1)}
    kept = {
        tuple(table.src_points[0, k].tolist() + table.trg_points[0, k].tolist()) for k in range(2)
    }
    assert kept <= all_rows and len(kept) == 2
    assert table.src_points[1, 0].tolist() == [4, 4] and table.trg_points[1, 0].tolist() == [6, 2]
    # thr_t: over all three rows of pair 0, not only the two kept
    assert table.trg_extent.tolist() == [9.0, 6.0]
    again = pairs_from_labels(labels_table(), "car", {}, max_kps=2, seed=0)
    assert torch.equal(again.src_points, table.src_points)


def test_bad_label_tables_are_rejected_with_the_file_named():
    with pytest.raises(ValueError, match=r"trn/car\.parquet.*trg_row"):
        pairs_from_labels(
            labels_table().drop(columns="trg_row"), "car", {}, 50, 0, "trn/car.parquet"
        )


def test_validation_sampling_draws_with_replacement_only_from_larger_sets():
    assert sample_with_replacement(3, 5, 0, "car").tolist() == [0, 1, 2]
    drawn = sample_with_replacement(50, 40, 0, "car")
    assert len(drawn) == 40 and len(set(drawn.tolist())) < 40  # 40 of 50 with replacement repeats


def test_feature_bank_reads_each_image_once_within_its_budget():
    reads = []

    def loader(cat, stem):
        reads.append(stem)
        return torch.full((3, 2, 2), float(int(stem)))

    bank = FeatureBank([("c", "0"), ("c", "1"), ("c", "2")], loader, torch.float16)
    for _ in range(3):
        batch = bank.stack([2, 0, 1, 0])
    assert batch.dtype == torch.float16 and batch[:, 0, 0, 0].tolist() == [2, 0, 1, 0]
    assert sorted(reads) == ["0", "1", "2"] and bank.bytes == 3 * 12 * 2
    small = FeatureBank([("c", "0"), ("c", "1")], loader, torch.float32, max_bytes=48)  # one image
    small.stack([0, 1, 0])
    assert small.reads == 3 and small.bytes == 48


def test_pair_tables_concatenate_with_padding():
    a = pairs_from_labels(labels_table(), "car", {}, max_kps=3, seed=0)
    b = pairs_from_labels(labels_table().iloc[3:], "dog", {}, max_kps=3, seed=0)
    both = PairTable.concat([a, b])
    assert both.valid.shape == (3, 3) and both.valid.sum(1).tolist() == [3, 1, 1]
    assert np.array_equal(both.select(torch.tensor([2])).trg_points[0, 0].numpy(), [6, 2])
