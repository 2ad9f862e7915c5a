"""tversky_keras.baseline: the FLAIR threshold, checked against hand-worked cases and brute force."""

import numpy as np
import pytest

from tversky_keras.baseline import (brain_core, choose_k, flair_zscore, leave_one_out_k,
                                    threshold_segmentation)


def pooled_dsc(truths, zscores, brains, k):
    tp = called = n_true = 0
    for truth, z, brain in zip(truths, zscores, brains, strict=True):
        mask = (z >= k) & brain
        tp += np.sum(mask & truth)
        called += mask.sum()
        n_true += np.sum(truth & brain)
    return 2 * tp / (called + n_true)


def brute_force_k(truths, zscores, brains):
    """Every brain value tried as k; the first (highest) of the best."""
    candidates = np.unique(np.concatenate([z[b] for z, b in zip(zscores, brains)]))[::-1]
    scores = [pooled_dsc(truths, zscores, brains, k) for k in candidates]
    best = int(np.argmax(scores))
    return float(candidates[best]), float(scores[best])


def test_zscore_is_the_brains_mean_and_std_and_zero_outside():
    rng = np.random.default_rng(0)
    flair = rng.gamma(4.0, 50.0, (6, 7, 5))
    brain = rng.random(flair.shape) > 0.3
    z = flair_zscore(flair, brain)
    values = flair[brain]
    np.testing.assert_allclose(z[brain], (values - values.mean()) / values.std(), rtol=1e-5)
    assert not z[~brain].any() and z.dtype == np.float32


@pytest.mark.parametrize("flair,brain,message", [
    (np.ones(4), np.zeros(4, bool), "brain mask is empty"),
    (np.ones(4), np.ones(4, bool), "one intensity"),
    (np.array([1.0, np.nan, 2.0]), np.ones(3, bool), "NaN or infinite"),
    (np.ones(4), np.ones(3, bool), "differ in shape"),
])
def test_zscore_refuses_what_has_no_zscore(flair, brain, message):
    with pytest.raises(ValueError, match=message):
        flair_zscore(flair, brain)


def test_the_core_is_the_brain_farther_than_the_depth_from_outside_by_brute_force():
    """Each brain voxel's distance (mm, at an anisotropic voxel size) to the nearest
    voxel outside the brain or outside the grid, tried against every such voxel."""
    rng = np.random.default_rng(1)
    brain = np.zeros((9, 10, 7), bool)
    brain[1:8, 1:9, 1:6] = rng.random((7, 8, 5)) > 0.15
    spacing = (1.0, 1.5, 2.0)
    padded = np.pad(brain, 1)
    outside = np.argwhere(~padded) - 1
    inside = np.argwhere(brain)
    distance = np.sqrt((((inside[:, None, :] - outside[None]) * spacing) ** 2).sum(-1)).min(1)
    for depth in (0.0, 1.0, 1.6, 2.5):
        expected = np.zeros_like(brain)
        expected[tuple(inside[distance > depth].T)] = True
        np.testing.assert_array_equal(brain_core(brain, spacing, depth),
                                      expected if depth else brain)
    with pytest.raises(ValueError, match="core depth"):
        brain_core(brain, spacing, -1.0)


def test_core_zscore_reads_the_core_and_applies_to_the_whole_brain():
    """A rim of very bright and very dark voxels around a brain moves the whole-brain
    z-score of the brain's voxels, not the core one's (read past the rim)."""
    rng = np.random.default_rng(2)
    flair = rng.normal(100.0, 10.0, (30, 30, 30))
    grid = np.indices(flair.shape) - 14.5
    radius = np.sqrt((grid ** 2).sum(0))
    brain, rimmed = radius < 10, radius < 13
    rim = rimmed & ~brain
    changed = flair.copy()
    changed[rim] = np.where(rng.random(rim.sum()) > 0.5, 400.0, 5.0)
    core = brain_core(brain, 1.0, 6.0)   # checked by brute force above
    assert 0 < core.sum() < brain.sum() and (radius[core] < 10 - 5).all()
    values = flair[core]
    expected = (flair - values.mean()) / values.std()
    z = flair_zscore(flair, brain, spacing=1.0, core_mm=6.0)
    np.testing.assert_allclose(z[brain], expected[brain], rtol=1e-4, atol=1e-4)
    assert not z[~brain].any()
    # With the rim in the brain mask: the core (deeper than 6 mm of the rimmed brain)
    # lies inside the brain, so the brain's voxels keep nearly their z; the whole
    # brain's statistics move them by far more.
    near = flair_zscore(changed, rimmed, spacing=1.0, core_mm=6.0)
    whole = flair_zscore(changed, rimmed)
    assert np.abs(near[brain] - z[brain]).max() < 0.5
    assert np.abs(whole[brain] - z[brain]).max() > 1.0
    with pytest.raises(ValueError, match="voxel size"):
        flair_zscore(flair, brain, core_mm=6.0)
    with pytest.raises(ValueError, match="no voxels deeper than 20 mm"):
        flair_zscore(flair, brain, spacing=1.0, core_mm=20.0)


def test_threshold_calls_nothing_outside_the_brain():
    z = np.array([5.0, 5.0, 1.0, -1.0])
    brain = np.array([True, False, True, True])
    assert threshold_segmentation(z, brain, 1.0).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="finite"):
        threshold_segmentation(z, brain, float("inf"))


def test_choose_k_hand_worked():
    # Scan A: z 3, 2, 1, 0 with the first two lesion; scan B: 2.5, 1.5, 0.5, the first.
    # k = 3: 2*1/(1+3) = 0.5; k = 2.5: 2*2/(2+3) = 0.8; k = 2: 2*3/(3+3) = 1.
    truths = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 0], bool)]
    zscores = [np.array([3.0, 2.0, 1.0, 0.0]), np.array([2.5, 1.5, 0.5])]
    brains = [np.ones(4, bool), np.ones(3, bool)]
    assert choose_k(truths, zscores, brains) == (2.0, 1.0)


def test_choose_k_matches_brute_force_on_random_scans():
    rng = np.random.default_rng(1)
    truths, zscores, brains = [], [], []
    for _ in range(3):
        truth = rng.random((9, 8, 7)) > 0.9
        z = rng.normal(size=truth.shape) + 1.5 * truth
        truths.append(truth)
        zscores.append(z)
        brains.append(rng.random(truth.shape) > 0.2)
    k, dsc = choose_k(truths, zscores, brains)
    expected_k, expected_dsc = brute_force_k(truths, zscores, brains)
    assert dsc == pytest.approx(expected_dsc, abs=1e-12)
    assert pooled_dsc(truths, zscores, brains, k) == pytest.approx(expected_dsc, abs=1e-12)
    assert k == pytest.approx(expected_k)


def test_leave_one_out_uses_only_the_other_scans():
    rng = np.random.default_rng(2)
    references = {}
    for name, shift in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        truth = rng.random((10, 10, 6)) > 0.85
        references[name] = (truth, rng.normal(size=truth.shape) + shift * truth,
                            np.ones(truth.shape, bool))
    chosen = leave_one_out_k(references)
    for name in references:
        others = [v for other, v in references.items() if other != name]
        assert chosen[name] == choose_k(*zip(*others))[0]
    assert leave_one_out_k({"a": references["a"]}) == {"a": None}


def test_no_lesion_anywhere_gives_no_k():
    assert choose_k([np.zeros(4, bool)], [np.arange(4.0)], [np.ones(4, bool)])[0] is None


def test_threshold_union_is_the_union_of_the_two_masks_at_every_mask_threshold(rng):
    from tversky_keras.baseline import threshold_union

    probability = rng.random((6, 5, 4)).astype(np.float32)
    zscore = rng.normal(size=(6, 5, 4)).astype(np.float32)
    brain = rng.random((6, 5, 4)) > 0.2
    united = threshold_union(probability, zscore, brain, k=1.0)
    called = (zscore >= 1.0) & brain
    assert united.dtype == np.float32
    for t in (0.1, 0.5, 0.9, 1.0):
        np.testing.assert_array_equal(united >= t, (probability >= t) | called)
    with pytest.raises(ValueError, match="differ in shape"):
        threshold_union(probability[:5], zscore, brain, k=1.0)
    with pytest.raises(ValueError, match="finite"):
        threshold_union(probability, zscore, brain, k=float("nan"))
