"""Pseudo-labelling: NN, cycle checks, chains, sphere filter, sampling, toggles, quality, files."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diysc.filter_steps import REJECTIONS, STEPS, TOGGLES
from diysc.formats.labels import LabelsError, read_labels, write_labels
from diysc.pck_rule import correct_at
from diysc.pseudo.chain import aligned_lists, match_link, ordered_pairs, propagate
from diysc.pseudo.filters import sphere_keep
from diysc.pseudo.labels import (
    CategoryImages,
    Settings,
    _DirectMatches,
    category_seed,
    generate,
)
from diysc.pseudo.matching import (
    cycle_mask,
    nearest_neighbours,
    relaxed_cycle_mask,
    strict_cycle_mask,
)
from diysc.pseudo.quality import ImageTruth, score_matches
from diysc.pseudo.sampling import chain_groups, sample_chains, sample_pairs
from tests.conftest import ROOT


def sims(matrix) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose similarity matrix is exactly `matrix`: identity rows × matrixᵀ."""
    s = torch.as_tensor(matrix, dtype=torch.float32)
    return torch.eye(s.shape[0]), s.T.contiguous()


# --- nearest neighbours and cycle checks ------------------------------------------------------


def test_nn_picks_the_argmax_within_the_target_candidates():
    sim = [[0.9, 0.5, 0.7, 0.1],
           [0.2, 0.8, 0.3, 0.4],
           [0.1, 0.2, 0.3, 0.6],
           [0.0, 0.0, 0.0, 0.0]]  # fmt: skip
    fs, ft = sims(sim)
    all_ = torch.ones(4, dtype=torch.bool)
    fwd, bwd = nearest_neighbours(fs, ft, all_, all_)
    assert fwd.tolist()[:3] == [0, 1, 3] and bwd.tolist() == [0, 1, 0, 2]
    cand_t = torch.tensor([False, False, True, True])  # the global best targets are excluded
    fwd, _ = nearest_neighbours(fs, ft, all_, cand_t)
    assert fwd.tolist()[:3] == [2, 3, 3]
    cand_s = torch.tensor([False, True, True, False])
    _, bwd = nearest_neighbours(fs, ft, cand_s, all_)
    assert bwd.tolist() == [1, 1, 1, 2]


def test_candidate_only_nn_equals_the_masked_full_argmax_ties_included():
    # Small-integer features: many exact ties, which must go to the lowest flat index as in a
    # masked argmax over the full grid.
    gen = torch.Generator().manual_seed(3)
    fs, ft = torch.randint(-1, 2, (2, 3, 25, 4), generator=gen).float().unbind(0)
    cand_s, cand_t = (torch.rand(2, 3, 25, generator=gen) < 0.5).unbind(0)
    fwd, bwd = nearest_neighbours(fs, ft, cand_s, cand_t)
    sim = fs @ ft.transpose(1, 2)
    full_fwd = sim.masked_fill(~cand_t[:, None, :], -math.inf).argmax(2)
    full_bwd = sim.masked_fill(~cand_s[:, :, None], -math.inf).argmax(1)
    assert torch.equal(fwd[cand_s], full_fwd[cand_s]) and torch.equal(bwd[cand_t], full_bwd[cand_t])
    assert (sim == sim.amax(2, keepdim=True)).sum() > sim.shape[0] * sim.shape[1]  # ties exist


def test_strict_cycle_keeps_exactly_the_mutual_nearest_neighbours():
    gen = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(2, 3, 9, 5, generator=gen).unbind(0)  # a batch of 3 pairs, grid 3
    all_ = torch.ones(3, 9, dtype=torch.bool)
    target, keep = match_link(fs, ft, all_, all_, "strict", grid=3, r_max=2)
    sim = (fs @ ft.transpose(1, 2)).numpy()
    for b in range(
        3
    ):  # brute force: p ↔ q mutual iff argmax_q sim[p] = q and argmax_p sim[:, q] = p
        mutual = [int(np.argmax(sim[b, :, int(np.argmax(sim[b, p]))]) == p) for p in range(9)]
        assert keep[b].int().tolist() == mutual
        assert target[b].tolist() == sim[b].argmax(1).tolist()
    assert 0 < keep.sum() < keep.numel()  # the example has both kinds


def test_relaxed_cycle_is_euclidean_on_the_grid_and_inclusive():
    grid = 7
    src = torch.tensor([3 * grid + 3] * 6)
    back = torch.tensor(
        [3 * grid + 5, 3 * grid + 0, 4 * grid + 4, 1 * grid + 3, 5 * grid + 4, 3 * grid + 3]
    )
    # offsets: (2,0) d=2 keep; (-3,0) d=3 reject; (1,1) keep; (0,-2) keep; (1,2) d=√5 reject; (0,0)
    assert relaxed_cycle_mask(src, back, grid, 2).tolist() == [True, False, True, True, False, True]
    assert strict_cycle_mask(src, back).tolist() == [False] * 5 + [True]
    assert cycle_mask("none", src, back, grid, 2).all()
    with pytest.raises(ValueError, match="unknown cycle mode 'loose'"):
        cycle_mask("loose", src, back, grid, 2)


def test_relaxed_link_keeps_a_back_match_at_distance_2_and_rejects_one_at_3():
    grid = 4  # source patches 0 and 1 both match target 0, whose back-match is patch 3 (row 0)
    n = grid * grid
    sim = torch.zeros(n, n)
    sim[0, 0] = sim[1, 0] = 1.0
    sim[3, 0] = 2.0  # target 0 back-matches source 3: 3 patches from source 0, 2 from source 1
    fs, ft = sims(sim)
    cand = torch.zeros(n, dtype=torch.bool)
    cand[[0, 1, 3]] = True
    target, keep = match_link(fs, ft, cand, torch.ones(n, dtype=torch.bool), "relaxed", grid, 2)
    assert target[[0, 1]].tolist() == [0, 0]
    assert keep[0].item() is False and keep[1].item() is True
    _, strict = match_link(fs, ft, cand, torch.ones(n, dtype=torch.bool), "strict", grid, 2)
    assert strict[[0, 1]].tolist() == [False, False]


# --- chains ------------------------------------------------------------------------------------


def test_chain_backtracking_keeps_the_lists_aligned():
    """Grid 2 (4 patches), K = 4, hand-built links; the backward NN sees only the surviving set."""
    n, k = 4, 4
    # link 0→1: 0→1, 1→1, 2→3, 3→0 ; backward from image-1 patches: 1→1, 3→2, 0→3 (mutual)
    link0 = torch.zeros(n, n)
    link0[0, 1], link0[1, 1], link0[2, 3], link0[3, 0] = 1.0, 2.0, 1.0, 1.0
    # link 1→2: 1→2, 3→2, 0→0 ; target 2 back-matches source 1 (strict fails for row from 3)
    link1 = torch.zeros(n, n)
    link1[1, 2], link1[3, 2], link1[0, 0] = 2.0, 1.0, 1.0
    # link 2→3: 2→3, 0→1, both mutual
    link2 = torch.zeros(n, n)
    link2[2, 3], link2[0, 1] = 1.0, 1.0
    eye = torch.eye(n)
    # Each link gets its own channels, so feat_k · feat_(k+1)ᵀ is exactly link_k.
    f = torch.zeros(k, n, 3 * n)
    for i, link in enumerate((link0, link1, link2)):
        f[i, :, i * n : (i + 1) * n] = eye
        f[i + 1, :, i * n : (i + 1) * n] = link.T
    cands = torch.ones(1, k, n, dtype=torch.bool)
    positions, alive = propagate(f[None], cands, "strict", grid=2, r_max=2)
    lists = aligned_lists(positions[0], alive[0])
    # rows from I0: 0→1 (back-match of 1 is 1: dies), 1→1→2→3, 2→3→2 (2 back-matches 1: dies), 3→0→0→1
    assert lists.tolist() == [[1, 3], [1, 0], [2, 0], [3, 1]]
    assert lists.shape[1] == alive.sum()
    _, alive_none = propagate(f[None], cands, "none", grid=2, r_max=2)
    assert alive_none.all()  # no cycle check: every row survives
    pairs = ordered_pairs(4)
    assert len(pairs) == 12 and len(set(pairs)) == 12 and all(i != j for i, j in pairs)


def test_a_given_first_link_replaces_the_computed_one():
    gen = torch.Generator().manual_seed(5)
    feats = torch.nn.functional.normalize(torch.randn(2, 3, 16, 8, generator=gen), dim=-1)
    cands = torch.rand(2, 3, 16, generator=gen) < 0.7
    first = match_link(feats[:, 0], feats[:, 1], cands[:, 0], cands[:, 1], "relaxed", 4, 1)
    plain = propagate(feats, cands, "relaxed", 4, 1)
    given = propagate(feats, cands, "relaxed", 4, 1, first_link=first)
    assert all(torch.equal(a, b) for a, b in zip(plain, given, strict=True))
    none_kept = (first[0], torch.zeros_like(first[1]))
    assert not propagate(feats, cands, "relaxed", 4, 1, first_link=none_kept)[1].any()


def test_backward_search_is_restricted_to_the_surviving_set():
    """A patch outside the surviving set cannot steal the back-match at later links."""
    n = 4
    link0 = torch.zeros(n, n)
    link0[0, 0] = 1.0
    link0[1, 0] = 0.5  # patch 1 of I0 → target 0 too but is not a candidate
    link1 = torch.zeros(n, n)
    link1[0, 2] = 1.0
    link1[3, 2] = 5.0  # patch 3 of I1 would win the back-match if it were searched
    f = torch.zeros(3, n, 2 * n)
    f[0, :, :n], f[1, :, :n] = torch.eye(n), link0.T
    f[1, :, n:], f[2, :, n:] = torch.eye(n), link1.T
    cands = torch.ones(1, 3, n, dtype=torch.bool)
    cands[0, 0] = torch.tensor([True, False, False, False])
    positions, alive = propagate(f[None], cands, "strict", grid=2, r_max=0)
    assert alive[0].tolist() == [True, False, False, False]
    assert positions[0, :, 0].tolist() == [0, 0, 2]


# --- sphere filter -----------------------------------------------------------------------------


def test_sphere_threshold_is_inclusive():
    x, y = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    assert sphere_keep(x, y, 0.5).item()  # exactly 90° at θ = 0.5
    assert sphere_keep(x, -x, 1.0).item()  # exactly 180° at θ = 1
    beyond = torch.tensor([-math.sin(1e-4), math.cos(1e-4), 0.0])
    assert not sphere_keep(x, beyond, 0.5).item()
    assert sphere_keep(x, x, 0.15).item()


# --- sampling ----------------------------------------------------------------------------------


def test_chains_step_exactly_one_bin_per_link_in_both_directions():
    azimuths = [0, 0, 1, 1, 2, 3, 3, 5, 6]
    rng = np.random.default_rng(0)
    total = sum(int(np.prod([len(s) for s in g])) for g in chain_groups(azimuths, 4))
    # +1 direction: anchor 0: 2·2·1·2 = 8; -1 direction: anchor 3: 2·1·2·2 = 8
    assert total == 16
    chains = sample_chains(azimuths, 4, 100, rng)
    assert len(chains) == 16 and len({tuple(c) for c in chains}) == 16
    steps = {tuple(np.diff([azimuths[i] for i in c]) % 8) for c in chains}
    assert steps == {(1, 1, 1), (7, 7, 7)}
    again = sample_chains(azimuths, 4, 5, np.random.default_rng(0))
    assert (again == sample_chains(azimuths, 4, 5, np.random.default_rng(0))).all()


def test_too_few_bins_fall_back_to_random_tuples_with_a_warning():
    with pytest.warns(UserWarning, match="cow: no azimuth chain of length 4 .2 distinct"):
        chains = sample_chains([0, 0, 1, 1, 1], 4, 7, np.random.default_rng(0), "cow")
    assert chains.shape == (7, 4)
    assert all(len(set(c)) == 4 for c in chains)
    with (
        pytest.raises(ValueError, match="cow: 3 images, fewer than the 4"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        sample_chains([0, 1, 2], 4, 7, np.random.default_rng(0), "cow")


def test_pairs_are_uniform_over_all_same_category_pairs():
    pairs = sample_pairs(20, 380, np.random.default_rng(0))
    assert len({tuple(p) for p in pairs}) == 380  # every ordered pair once, no self-pairs
    assert (pairs[:, 0] != pairs[:, 1]).all()
    few = sample_pairs(20, 40, np.random.default_rng(1))
    assert (few[:, 1] >= 8).any()  # not limited to the first eight images (reference bug)


# --- generation with every toggle --------------------------------------------------------------


def toy_category(n_images=8, grid=4, seed=0) -> CategoryImages:
    """Random features; a 2×2 object mask in the centre of a valid area that excludes row 0."""
    gen = torch.Generator().manual_seed(seed)
    n = grid * grid
    feats = {
        f"im{i}": torch.nn.functional.normalize(torch.randn(n, 6, generator=gen), dim=1)
        for i in range(n_images)
    }
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    mask[1:3, 1:3] = True
    valid = torch.ones(grid, grid, dtype=torch.bool)
    valid[0] = False
    sphere = {
        s: torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=1) for s in feats
    }
    return CategoryImages(
        category="toy",
        stems=list(feats),
        azimuths=[i % 8 for i in range(n_images)],
        features=feats.__getitem__,
        candidates=lambda s: mask.reshape(-1),
        sphere=sphere.__getitem__,
    ), valid


def run(images, cap=40, **kw):
    settings = Settings(**kw)
    frame, report = generate(images, settings, cap, grid=4, size=56, rng=np.random.default_rng(0))
    return frame, report


def test_each_toggle_changes_the_output_as_expected():
    images, valid = toy_category()
    base = dict(mask=True, cycle="none", chaining=False, sphere_filter=False)
    naive, _ = run(images, **base)
    # masks on: every source and target point lies in the 2×2 object; no cycle: all 4 per pair
    assert set(zip(naive.src_col, naive.src_row, strict=True)) <= {(1, 1), (2, 1), (1, 2), (2, 2)}
    assert set(zip(naive.trg_col, naive.trg_row, strict=True)) <= {(1, 1), (2, 1), (1, 2), (2, 2)}
    assert (naive.groupby("pair").size() == 4).all() and naive.pair.nunique() == 40
    # mask off: candidates are every non-padded patch
    unmasked_images = CategoryImages(
        **{**images.__dict__, "candidates": lambda s: valid.reshape(-1)}
    )
    unmasked, _ = run(unmasked_images, **base)
    assert (unmasked.groupby("pair").size() == 12).all() and (unmasked.src_row > 0).all()
    # cycle: strict ⊆ relaxed ⊆ none, pair by pair
    strict, _ = run(images, **{**base, "cycle": "strict"})
    relaxed, _ = run(images, **{**base, "cycle": "relaxed", "r_max": 1})
    assert len(strict) < len(relaxed) < len(naive)
    key = ["src", "trg", "src_col", "src_row", "trg_col", "trg_row"]
    assert len(strict.merge(relaxed[key], on=key)) == len(strict)
    # chaining: all ordered pairs of 4-chains, up to three bins apart, both directions
    chained, _ = run(images, **{**base, "chaining": True, "cycle": "relaxed"})
    gaps = {(int(t[2:]) - int(s[2:])) % 8 for s, t in zip(chained.src, chained.trg, strict=True)}
    assert gaps == {1, 2, 3, 5, 6, 7}
    assert {(int(t[2:]) - int(s[2:])) % 8 for s, t in zip(naive.src, naive.trg, strict=True)} - {
        1,
        2,
        3,
        5,
        6,
        7,
    }
    # sphere filter: a subset, and every kept match is within θ·π on the sphere
    filtered, _ = run(images, **{**base, "sphere_filter": True, "sphere_threshold": 0.3})
    assert 0 < len(filtered) < len(naive)
    angles = [
        math.acos(
            max(
                -1.0,
                min(
                    1.0,
                    float(
                        images.sphere(r.src)[r.src_row * 4 + r.src_col]
                        @ images.sphere(r.trg)[r.trg_row * 4 + r.trg_col]
                    ),
                ),
            )
        )
        for r in filtered.itertuples()
    ]
    assert max(angles) <= 0.3 * math.pi + 1e-6
    # the cap and the seed: at most `cap` pairs, identical on a rerun, and batching is invisible
    again, _ = run(images, **{**base, "sphere_filter": True, "sphere_threshold": 0.3})
    pd.testing.assert_frame_equal(filtered, again)
    batched, _ = generate(
        images,
        Settings(**{**base, "sphere_filter": True, "sphere_threshold": 0.3}),
        40,
        grid=4,
        size=56,
        rng=np.random.default_rng(0),
        batch=3,
    )
    pd.testing.assert_frame_equal(filtered, batched)


def test_first_links_are_computed_once_per_pair_of_images():
    gen = torch.Generator().manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(2, 2, 16, 6, generator=gen), dim=-1)
    cands = torch.rand(2, 2, 16, generator=gen) < 0.6
    direct = _DirectMatches(Settings(cycle="relaxed", r_max=1), grid=4, capacity=8)
    target, consistent = direct.get([0, 1], [1, 2], list(feats), cands, 0, 1)
    want = match_link(feats[:, 0], feats[:, 1], cands[:, 0], cands[:, 1], "relaxed", 4, 1)
    assert torch.equal(target, want[0]) and torch.equal(consistent, want[1])
    # images 0 → 1 again, now with other features: the kept result is returned, not recomputed
    again = direct.get([0], [1], [torch.zeros(2, 16, 6)], cands[:1], 0, 1)
    assert torch.equal(again[0][0], want[0][0]) and torch.equal(again[1][0], want[1][0])


def test_caches_are_invisible_in_the_labels():
    images, _ = toy_category(n_images=16)  # 2 images per bin: chains share their first pairs
    settings = Settings(mask=True, cycle="relaxed", chaining=True, sphere_filter=False)
    cached, _ = generate(images, settings, 200, 4, 56, np.random.default_rng(0))
    uncached, _ = generate(images, settings, 200, 4, 56, np.random.default_rng(0), cache_images=0)
    pd.testing.assert_frame_equal(cached, uncached)


def test_pairs_with_no_points_are_dropped_and_the_cap_holds():
    images, _ = toy_category()
    frame, report = run(
        images,
        cap=25,
        mask=True,
        cycle="strict",
        chaining=True,
        sphere_filter=True,
        sphere_threshold=0.05,
    )
    assert report.pairs == frame.pair.nunique() <= 25
    assert (frame.groupby("pair").size() > 0).all()
    assert sorted(frame.pair.unique()) == list(range(report.pairs))


# --- quality -----------------------------------------------------------------------------------


def test_quality_counts_match_a_hand_computed_case():
    grid, size = 4, 56  # stride 14; patch (c, r) centre = (14c + 7, 14r + 7)
    truth_s = ImageTruth(np.array([[21.0, 21.0], [49.0, 7.0], [np.nan, np.nan]]), 40.0)
    truth_t = ImageTruth(np.array([[35.0, 35.0], [7.0, 49.0], [7.0, 7.0]]), 40.0)
    src = torch.tensor(
        [5, 3, 0, 15]
    )  # (1,1): on kp0; (3,0): on kp1; (0,0): 19.8 px from kp0; (3,3)
    trg = torch.tensor([10, 13, 10, 0])  # kp0 → (2,2) exact; kp1 → (1,3) = (21, 49), 14 px off
    counts = score_matches(src, trg, truth_s, truth_t, size, grid)
    assert counts.points == 4 and counts.evaluated == 2
    assert counts.correct == {0.1: 1, 0.05: 1}  # 14 px ≥ 0.1·40 = 4 px
    wide = score_matches(src, trg, truth_s, ImageTruth(truth_t.keypoints, 150.0), size, grid)
    assert wide.correct == {0.1: 2, 0.05: 1}  # 14 < 15, 14 ≥ 7.5


def test_label_precision_scores_the_boundary_as_the_evaluations_pck():
    """One rule (`diysc.pck_rule`): a label 26.4 px from its keypoint with bbox side 264 is wrong
    at α = 0.1, as PCK scores it (float32(33.4) − 7 = 26.4000015 > float32(0.1) · 264 =
    26.4000004), where a float64 comparison (26.4 < 26.400000000000002) would count it."""
    grid, size = 4, 56  # patch (0, 0) centre = (7, 7)
    truth_s = ImageTruth(np.array([[7.0, 7.0]]), 264.0)
    truth_t = ImageTruth(np.array([[33.4, 7.0]]), 264.0)
    counts = score_matches(torch.tensor([0]), torch.tensor([0]), truth_s, truth_t, size, grid)
    assert counts.evaluated == 1 and counts.correct == {0.1: 0, 0.05: 0}
    pck = correct_at(np.array([[7.0, 7.0]]), truth_t.keypoints, 264.0, (0.1,))
    assert pck.tolist() == [[False]]


def test_a_label_landing_on_the_keypoints_counterpart_is_counted_as_a_confusion():
    grid, size = 4, 56  # patch (c, r) centre = (14c + 7, 14r + 7)
    kps = np.array([[7.0, 7.0], [49.0, 7.0], [7.0, 49.0]])  # slots 0 / 1 counterparts, 2 alone
    truth_s = ImageTruth(kps, 40.0, np.array([1, 0, -1]))
    truth_t = ImageTruth(kps, 40.0, np.array([1, 0, -1]))
    src = torch.tensor([0, 3, 12])  # on slots 0, 1, 2
    trg = torch.tensor([3, 3, 0])  # slot 0 → slot 1's place; slot 1 right; slot 2 → slot 0's
    counts = score_matches(src, trg, truth_s, truth_t, size, grid)
    assert counts.evaluated == 3 and counts.correct[0.1] == 1
    assert counts.confused[0.1] == 1  # slot 2 has no counterpart: wrong, not a confusion
    assert counts.to_dict()["confusion_alpha10"] == round(1 / 3, 6)
    # Without symmetry annotations nothing is a confusion.
    plain = score_matches(src, trg, ImageTruth(kps, 40.0), ImageTruth(kps, 40.0), size, grid)
    assert plain.confused == {0.1: 0, 0.05: 0} and plain.correct == counts.correct


def symmetric_category(seed=0) -> CategoryImages:
    """Synthetic symmetric objects: mirrored parts share their appearance up to noise, so NN often
    confuses left and right; the sphere (from ground truth) puts the two sides at opposite poles."""
    grid, size, width = 8, 112, 6
    gen = torch.Generator().manual_seed(seed)
    part = torch.nn.functional.normalize(torch.randn(width // 2, 4, 16, generator=gen), dim=-1)
    side = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    feats, spheres, truths, masks, azimuths = {}, {}, {}, {}, []
    for i in range(16):
        stem, x0, y0 = f"s{i:02d}", 1 + i % 2, 2 + (i // 2) % 2  # object origin varies per image
        f = 0.2 * torch.randn(grid, grid, 16, generator=gen)
        sph = torch.zeros(grid, grid, 3)
        sph[..., 2] = 1.0
        m = torch.zeros(grid, grid, dtype=torch.bool)
        for c in range(width):
            sign = -1.0 if c < width // 2 else 1.0
            mirror = min(c, width - 1 - c)
            f[y0 : y0 + 4, x0 + c] += part[mirror] + 0.15 * sign * side
            sph[y0 : y0 + 4, x0 + c] = torch.tensor([sign, 0.0, 0.0])
            m[y0 : y0 + 4, x0 + c] = True
        feats[stem] = torch.nn.functional.normalize(f.reshape(-1, 16), dim=1)
        spheres[stem], masks[stem] = sph.reshape(-1, 3), m.reshape(-1)
        # keypoints: left and right ends of the top row of the object, at patch centres
        kps = np.array(
            [[14 * x0 + 7, 14 * y0 + 7], [14 * (x0 + width - 1) + 7, 14 * y0 + 7]], float
        )
        truths[stem] = ImageTruth(kps, 14.0 * width)
        azimuths.append(i // 2)
    return (
        CategoryImages(
            "sym",
            list(feats),
            azimuths,
            feats.__getitem__,
            masks.__getitem__,
            spheres.__getitem__,
            truths.__getitem__,
        ),
        grid,
        size,
    )


@pytest.mark.parametrize("chaining", [False, True])
def test_sphere_filtering_raises_precision_on_left_right_keypoints(chaining):
    images, grid, size = symmetric_category()
    precision = {}
    for sphere_filter in (False, True):
        settings = Settings(
            mask=True, cycle="relaxed", chaining=chaining, sphere_filter=sphere_filter
        )
        _, report = generate(images, settings, 60, grid, size, category_seed(0, "trn", "sym"))
        precision[sphere_filter] = report.emitted.to_dict()["precision_alpha10"]
        assert report.emitted.evaluated > 20
        steps = report.to_dict()
        assert steps["raw_nn"]["evaluated"] >= steps["cycle"]["evaluated"]
    assert precision[False] < 0.7 and precision[True] > 0.9


# --- files -------------------------------------------------------------------------------------


def test_labels_round_trip_and_errors_name_the_file(tmp_path):
    images, _ = toy_category()
    frame, _ = run(images, cap=5, mask=True, cycle="relaxed", chaining=True, sphere_filter=False)
    write_labels(tmp_path / "trn" / "toy.parquet", frame)
    back = read_labels(tmp_path, "trn", "toy")
    pd.testing.assert_frame_equal(back, frame)
    assert list(back.columns) == ["pair", "src", "trg", "src_col", "src_row", "trg_col", "trg_row"]
    with pytest.raises(LabelsError, match=r"val/toy\.parquet: pseudo-label file not found"):
        read_labels(tmp_path, "val", "toy")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "toy.parquet").write_text("not parquet")
    with pytest.raises(LabelsError, match=r"val/toy\.parquet: not a readable parquet file"):
        read_labels(tmp_path, "val", "toy")


# --- the stage, on stores written in the documented layouts -----------------------------------


def write_stores(root, grid=8, size=112, cats=("cow", "dog")):
    """An SPair-layout tree (two categories, 8 trn + 8 val images each) and its feature, mask and
    sphere stores, written in the layouts of docs/architecture.md."""
    import json

    from diysc.io import save_shard, write_json

    gen = torch.Generator().manual_seed(0)
    for cat in cats:
        dino, masks, spheres = {}, {}, {}
        for split in ("trn", "val"):
            stems = [f"{split}{i}" for i in range(8)]
            for i, stem in enumerate(stems):
                w, h = 112, 84  # padded vertically: rows 1 and 6 of the 8×8 grid hold padding
                kps = {str(j): [10.0 + 12 * j, 40.0] for j in range(5)} | {"5": None}
                ann = {
                    "image_width": w,
                    "image_height": h,
                    "bndbox": [5, 10, 100, 70],
                    "azimuth_id": i,
                    "kps": kps,
                }
                path = root / "dataset" / "ImageAnnotation" / cat / f"{stem}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(ann))
                image = root / "dataset" / "JPEGImages" / cat / f"{stem}.jpg"
                image.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (w, h), (120, 120, 120)).save(image)
                dino[stem] = torch.randn(12, grid, grid, generator=gen)
                mask = np.zeros((h, w), dtype=np.uint8)
                mask[20:70, 10:100] = 1
                masks[stem] = torch.from_numpy(mask)
                spheres[stem] = torch.nn.functional.normalize(
                    torch.randn(grid * grid, 3, generator=gen), dim=1
                )
            for i in range(len(stems) - 1):
                pair = {
                    "category": cat,
                    "src_imname": f"{stems[i]}.jpg",
                    "trg_imname": f"{stems[i + 1]}.jpg",
                    "src_bndbox": [5, 10, 100, 70],
                    "trg_bndbox": [5, 10, 100, 70],
                    "kps_ids": [0],
                }
                path = (
                    root
                    / "dataset"
                    / "PairAnnotation"
                    / split
                    / f"{i:06d}-{stems[i]}-{stems[i + 1]}:{cat}.json"
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(pair))
        save_shard(root / "features" / "dino" / f"{cat}.safetensors", dino)
        save_shard(root / "masks" / f"{cat}.safetensors", masks)
        save_shard(root / "sphere" / f"{cat}.safetensors", spheres)
    write_json(
        root / "features" / "info.json",
        {
            "size": size,
            "grid": grid,
            "dino_dim": 12,
            "sd_dims": [],
            "sd": False,
            "dtype": "float32",
            "categories": list(cats),
        },
    )


def run_stage(root, *overrides):
    from click.testing import CliRunner

    from stages.pseudo_labels import main
    from tests.conftest import ROOT

    args = [
        "--params",
        str(ROOT / "params.yaml"),
        "--dataset",
        str(root / "dataset"),
        "--features",
        str(root / "features"),
        "--masks",
        str(root / "masks"),
        "--sphere",
        str(root / "sphere"),
        "--out",
        str(root / "labels"),
        "--metrics",
        str(root / "metrics.json"),
        "--set",
        "pseudo.pairs_trn=30",
        "--set",
        "pseudo.pairs_val=10",
    ]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_stage_writes_labels_info_and_the_quality_report(tmp_path):
    pytest.importorskip("diysc.masks")
    import json

    write_stores(tmp_path)
    output = run_stage(tmp_path)
    assert "pseudo_labels (" in output and " pairs, " in output
    info = json.loads((tmp_path / "labels" / "info.json").read_text())
    assert (info["size"], info["grid"]) == (112, 8)
    for split, cap in (("trn", 30), ("val", 10)):
        for cat in ("cow", "dog"):
            frame = read_labels(tmp_path / "labels", split, cat)
            assert 0 < frame.pair.nunique() <= cap and frame.src.str.startswith(split).all()
            # masks on: object rows 2..5 only (mask rows 20..70 of 84, shifted by 14 px padding)
            assert frame.src_row.between(2, 5).all() and frame.trg_row.between(2, 5).all()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for split, cap in (("trn", 30), ("val", 10)):
        per_cat = [metrics["categories"][c][split]["pairs"] for c in ("cow", "dog")]
        assert metrics[split]["pairs"] == sum(per_cat) and all(0 < n <= cap for n in per_cat)
        assert info["counts"][split]["cow"]["pairs"] == per_cat[0]
    assert set(metrics["trn"]) >= {"raw_nn", "cycle", "chaining", "sphere_filter", "emitted"}
    assert metrics["trn"]["raw_nn"]["evaluated"] > 0
    assert "@" not in json.dumps(metrics)


def test_stage_without_sphere_filter_needs_no_sphere_points(tmp_path):
    pytest.importorskip("diysc.masks")
    import json
    import shutil

    write_stores(tmp_path)
    shutil.rmtree(tmp_path / "sphere")
    run_stage(tmp_path, "sphere_filter=false", "chaining=false", "mask=false")
    frame = read_labels(tmp_path / "labels", "trn", "cow")
    assert frame.groupby("pair").ngroups == 30
    assert (frame.src_row.between(1, 6)).all() and (frame.src_row.isin([1, 6])).any()  # no mask
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["trn"]["chaining"] == metrics["trn"]["cycle"]  # the step is the identity


# --- the registry of toggles and steps -----------------------------------------------------------


def test_every_step_function_is_code_the_pseudo_label_stage_tracks():
    """Functions are named in the registry, not imported; each must resolve, and its module must be
    in the stage's import closure (so DVC reruns the stage when it changes)."""
    from diysc.provenance import import_closure

    closure = import_closure(ROOT / "stages" / "pseudo_labels.py", ROOT)
    for step in STEPS:
        if step.function is None:
            assert step.kind == "emitted"
            continue
        assert callable(step.load()), step.name
        module = step.function.partition(":")[0]
        assert Path(*module.split(".")).with_suffix(".py") in closure, step.function
    assert [s.name for s in STEPS][-1] == "emitted" and REJECTIONS


def test_every_toggle_is_a_param_and_every_step_toggle_a_registered_toggle():
    from diysc.config.load import load_params

    params = load_params(ROOT / "params.yaml")
    settings = Settings.from_params(params)
    for toggle in TOGGLES:
        assert getattr(settings, toggle.param) == getattr(params, toggle.param)
    assert {s.toggle for s in STEPS} - {None} <= {t.param for t in TOGGLES}
