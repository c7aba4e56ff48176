"""Metrics against hand-worked values and DeepMind's surface-distance."""

import numpy as np
import pytest
import surface_distance as deepmind

from flare_eval import dice_coefficient, normalized_surface_dice, surface_distances
from flare_eval.io import read_label_map
from flare_eval.metrics import _SCAN_TO_TRANSFORM_COST


def deepmind_nsd(gt, pred, spacing, tolerance):
    return deepmind.compute_surface_dice_at_tolerance(deepmind.compute_surface_distances(gt, pred, spacing), tolerance)


def cube(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def test_dice_hand_worked():
    a = cube((4, 4, 4), (0, 0, 0), (2, 4, 4))  # 32 voxels
    b = cube((4, 4, 4), (1, 0, 0), (4, 4, 4))  # 48 voxels, 16 shared
    assert dice_coefficient(a, b) == pytest.approx(2 * 16 / 80)


def test_dice_empty_masks_are_nan_or_zero():
    empty = np.zeros((3, 3, 3), bool)
    assert np.isnan(dice_coefficient(empty, empty))
    assert dice_coefficient(empty, cube((3, 3, 3), (0, 0, 0), (1, 1, 1))) == 0.0


def test_nsd_hand_worked_shifted_cube_anisotropic():
    # A 3x3x3 voxel cube shifted by one voxel along the third axis (2 mm there).
    # Every face voxel's surfel sits on the corner lattice; faces perpendicular to
    # axis 2 are 2 mm from the other surface, all other surfels are at 0 or 2 mm
    # except the four side faces' outer rows. At 1 mm only the shared parts count.
    gt = cube((6, 6, 7), (1, 1, 1), (4, 4, 4))
    pred = cube((6, 6, 7), (1, 1, 2), (4, 4, 5))
    spacing = (1.0, 1.0, 2.0)
    d = surface_distances(gt, pred, spacing)
    # At 2 mm (one voxel step along axis 2) every surfel is within tolerance.
    assert d.surface_dice(2.0) == 1.0
    assert d.surface_dice(1.0) == pytest.approx(deepmind_nsd(gt, pred, spacing, 1.0), abs=1e-12)
    assert 0 < d.surface_dice(1.0) < 1


def test_nsd_identical_masks_is_one_and_disjoint_far_masks_zero():
    gt = cube((20, 20, 20), (2, 2, 2), (6, 6, 6))
    assert normalized_surface_dice(gt, gt, (0.5, 0.7, 3.0), 1.0) == 1.0
    far = cube((20, 20, 20), (14, 14, 14), (18, 18, 18))
    assert normalized_surface_dice(gt, far, (1.0, 1.0, 1.0), 2.0) == 0.0


def test_nsd_empty_cases():
    empty = np.zeros((5, 5, 5), bool)
    organ = cube((5, 5, 5), (1, 1, 1), (3, 3, 3))
    assert np.isnan(normalized_surface_dice(empty, empty, (1, 1, 1), 1.0))
    assert normalized_surface_dice(organ, empty, (1, 1, 1), 1.0) == 0.0
    assert normalized_surface_dice(empty, organ, (1, 1, 1), 1.0) == 0.0


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (0.8, 0.8, 2.5), (0.5, 2.0, 0.7), (0.7, 0.7, 6.0)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_nsd_matches_deepmind_on_real_organs(spacing, order):
    gt = read_label_map(REAL_GT).array
    pred = read_label_map(REAL_OTHER).array
    for label in (1, 2, 4, 5, 7, 9, 12):
        a = np.asarray(gt == label, order=order)
        b = np.asarray(pred == label, order=order)
        reference = deepmind.compute_surface_distances(a, b, spacing)
        for tolerance in (1.0, 2.0, 3.0, 5.0, 7.0):
            ours = normalized_surface_dice(a, b, spacing, tolerance)
            assert ours == pytest.approx(deepmind.compute_surface_dice_at_tolerance(reference, tolerance), abs=1e-9)
        full = surface_distances(a, b, spacing)
        # Exact distances agree bit for bit (DeepMind returns them sorted).
        np.testing.assert_array_equal(np.sort(full.distances_gt_to_pred_mm), reference["distances_gt_to_pred"])
        np.testing.assert_array_equal(np.sort(full.distances_pred_to_gt_mm), reference["distances_pred_to_gt"])


def test_nsd_tolerance_on_a_lattice_distance_uses_float64_like_deepmind():
    # 3 x 0.8 mm = 2.4000000000000004 mm in float64, just over a 2.4 mm tolerance:
    # DeepMind does not count such surfels; float32 implementations do.
    gt = cube((12, 12, 12), (3, 3, 3), (6, 8, 8))
    pred = cube((12, 12, 12), (3, 3, 3), (9, 8, 8))  # 3 voxels longer along axis 0
    spacing = (0.8, 0.8, 0.8)
    reference = deepmind_nsd(gt, pred, spacing, 2.4)
    assert normalized_surface_dice(gt, pred, spacing, 2.4) == pytest.approx(reference, abs=1e-12)
    assert normalized_surface_dice(gt, pred, spacing, 2.4) < normalized_surface_dice(gt, pred, spacing, 2.41)


def test_far_apart_masks_fall_back_to_the_feature_transform(monkeypatch):
    # Two random blobs mostly beyond the tolerance: the offset scan gives up
    # early and the feature transform must give identical values.
    rng = np.random.default_rng(3)
    gt = rng.random((30, 30, 12)) > 0.7
    pred = np.roll(gt, 7, axis=0) & (rng.random((30, 30, 12)) > 0.3)
    spacing = (0.9, 1.1, 2.5)
    expected = deepmind_nsd(gt, pred, spacing, 3.0)
    assert normalized_surface_dice(gt, pred, spacing, 3.0) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr("flare_eval.metrics._SCAN_TO_TRANSFORM_COST", 0)
    assert normalized_surface_dice(gt, pred, spacing, 3.0) == pytest.approx(expected, abs=1e-12)
    assert _SCAN_TO_TRANSFORM_COST > 0


def test_a_large_organ_slightly_off_on_a_fine_grid_is_settled_by_the_offset_scan(monkeypatch):
    """Thousands of corners and a ball of hundreds of offsets: most corners settle within a few voxels, so the
    scan finishes without a feature transform (a rule that projected the unsettled corners over every offset
    gave up at the first one)."""
    grid = np.indices((56, 56, 50))
    gt = ((grid - np.array([28, 28, 25])[:, None, None, None]) ** 2).sum(axis=0) <= 20 ** 2
    pred = np.roll(gt, (2, -1, 1), axis=(0, 1, 2))
    spacing = (0.8, 0.8, 1.0)
    expected = deepmind.compute_surface_distances(gt, pred, spacing)

    def refused(*_):
        raise AssertionError("the offset scan gave up")

    monkeypatch.setattr("flare_eval.metrics._feature_transform_distances", refused)
    monkeypatch.setattr("flare_eval.metrics._tree_distances", refused)
    for tolerance_mm in (2.0, 5.0, 7.0):
        ours = normalized_surface_dice(gt, pred, spacing, tolerance_mm)
        assert ours == pytest.approx(deepmind.compute_surface_dice_at_tolerance(expected, tolerance_mm), abs=1e-12)


@pytest.mark.parametrize("path", ["transform", "tree"])
def test_corners_left_by_the_scan_are_measured_in_their_own_box(monkeypatch, path):
    """What the scan leaves is measured in the box of those corners grown by the tolerance's reach: the same
    distances as over the whole grid (beyond the tolerance: inf)."""
    rng = np.random.default_rng(11)
    shape = (60, 52, 30)
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    gt[5:40, 6:30, 4:20] = rng.random((35, 24, 16)) > 0.2
    pred[8:42, 6:31, 5:21] = rng.random((34, 25, 16)) > 0.2
    pred[50:58, 40:50, 22:28] = True  # far from the ground truth: beyond reach, or just within it
    pred[44:47, 30:34, 18:22] = True
    spacing = (0.9, 1.1, 2.5)
    whole = surface_distances(gt, pred, spacing)  # no tolerance: every distance, over the whole grid
    monkeypatch.setattr("flare_eval.metrics._SCAN_TO_TRANSFORM_COST", 0)  # the scan hands over at once
    monkeypatch.setattr("flare_eval.metrics._TREE_COST_PER_POINT", float("inf") if path == "transform" else 0)
    for tolerance_mm in (1.5, 3.0, 6.0):
        within = surface_distances(gt, pred, spacing, max_distance_mm=tolerance_mm)
        for ours, full in ((within.distances_gt_to_pred_mm, whole.distances_gt_to_pred_mm),
                           (within.distances_pred_to_gt_mm, whole.distances_pred_to_gt_mm)):
            np.testing.assert_array_equal(ours, np.where(full <= tolerance_mm, full, np.inf))


def test_surface_corners_searched_in_a_box_equal_those_of_the_whole_mask():
    """Any box that holds the mask (the engine passes each mask's own box) gives the same corners in the same order."""
    from flare_eval.metrics import _mask_box, _surface_corners

    rng = np.random.default_rng(11)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 14, 3))
        mask = np.zeros(shape, bool)
        if rng.random() < 0.9:
            corner = [int(rng.integers(0, n)) for n in shape]
            size = [int(rng.integers(1, n - c + 1)) for n, c in zip(shape, corner)]
            mask[tuple(slice(c, c + k) for c, k in zip(corner, size))] = rng.random(size) > 0.4
        margin = tuple(int(m) for m in rng.integers(0, 4, 3))
        whole = _surface_corners(mask, margin)
        tight = _mask_box(mask) or (slice(0, 0),) * 3
        loose = tuple(slice(int(rng.integers(0, b.start + 1)), int(rng.integers(b.stop, n + 1)))
                      for b, n in zip(tight, shape)) if _mask_box(mask) else tight
        for box in (tight, loose):
            corners, codes = _surface_corners(mask, margin, box)
            np.testing.assert_array_equal(corners, whole[0])
            np.testing.assert_array_equal(codes, whole[1])


def test_dilations_by_the_26_and_18_connected_elements_equal_scipys():
    from scipy import ndimage

    from flare_eval.lesions import _dilate
    from flare_eval.metrics import _dilate_by_cube

    rng = np.random.default_rng(8)
    edges = ndimage.generate_binary_structure(3, 2)
    for _ in range(60):
        mask = rng.random(tuple(int(n) for n in rng.integers(1, 9, 3))) > rng.uniform(0.6, 1.0)
        np.testing.assert_array_equal(_dilate_by_cube(mask), ndimage.maximum_filter(mask, size=3, mode="constant"))
        iterations = int(rng.integers(0, 3))
        expected = ndimage.binary_dilation(mask, structure=edges, iterations=iterations) if iterations else mask
        np.testing.assert_array_equal(_dilate(mask, iterations), expected)


@pytest.mark.parametrize("slab", [16, 3, 1])
def test_label_boxes_equal_find_objects_for_every_integer_type(monkeypatch, slab):
    """The one-byte path (label bits, a slab of slices at a time) and the others (find_objects) on stray values:
    negative, above the labels, beyond a bit set's width."""
    from scipy import ndimage

    from flare_eval.scoring.engine import _label_boxes

    monkeypatch.setattr("flare_eval.scoring.engine._BITS_SLAB", slab)

    rng = np.random.default_rng(5)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        dtype = np.dtype(rng.choice([np.uint8, np.int8, np.int16, np.int32, np.uint64]))
        labels = np.zeros(shape, dtype)
        for _ in range(int(rng.integers(0, 8))):
            low = -3 if dtype.kind == "i" else 0
            labels[tuple(int(rng.integers(0, n)) for n in shape)] = rng.integers(low, 70 if rng.random() < 0.3 else 6)
        if rng.random() < 0.5:
            labels = np.asfortranarray(labels)
        wanted = [1, 2, 3, 4] if rng.random() < 0.6 else [1, 5, 15, 16, 31, 32, 63]
        expected = ndimage.find_objects(np.where(labels.astype(np.int64) > 0, labels, 0).astype(np.int64),
                                        max_label=max(wanted))
        assert _label_boxes(labels, wanted) == {label: expected[label - 1] for label in wanted}


def test_surface_dice_refuses_tolerance_beyond_computed_distances():
    gt = cube((8, 8, 8), (2, 2, 2), (5, 5, 5))
    d = surface_distances(gt, gt, (1, 1, 1), max_distance_mm=2.0)
    with pytest.raises(ValueError, match="exceeds max_distance_mm=2.0"):
        d.surface_dice(3.0)


@pytest.mark.parametrize(
    ("gt", "pred", "spacing", "error", "pattern"),
    [
        (np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), bool), (1, 1, 1), TypeError, "mask_gt must be .* bool"),
        (np.zeros((3, 3, 3), bool), np.zeros((3, 3, 4), bool), (1, 1, 1), ValueError, "same shape"),
        (np.zeros((3, 3), bool), np.zeros((3, 3), bool), (1, 1), ValueError, "must be 3D"),
        (np.zeros((3, 3, 3), bool), np.zeros((3, 3, 3), bool), (1, 0, 1), ValueError, "spacing_mm must be 3 positive"),
    ],
)
def test_bad_arguments_are_named(gt, pred, spacing, error, pattern):
    with pytest.raises(error, match=pattern):
        surface_distances(gt, pred, spacing)


from flare_eval import example_paths  # noqa: E402

# Real organs: the bundled case_0001 ground truth and an independent segmentation of the same CT.
REAL_GT = example_paths().labels / "case_0001.nii.gz"
REAL_OTHER = example_paths().predictions / "teamA" / "case_0001.nii.gz"


@pytest.mark.parametrize("shape, spacing_mm, tolerance_mm", [((17, 23, 11), (0.8, 0.8, 2.5), 2.0),
                                                           ((9, 31, 40), (1.5, 1.5, 5.0), 7.0),
                                                           ((25, 25, 25), (1.0, 1.0, 1.0), 1.0)])
def test_the_near_feature_prefilter_keeps_every_corner_within_reach_and_drops_far_ones(shape, spacing_mm,
                                                                                        tolerance_mm):
    """Against brute force: a corner with a feature within the tolerance is always kept; one whose block is more
    than one block from every feature's block (blocks as long as the ball's reach) is dropped."""
    from flare_eval.metrics import _CornerGrid, _margin_vx, _near_features

    rng = np.random.default_rng(len(shape) + int(tolerance_mm * 10))
    size = int(np.prod(shape))
    features, query = rng.choice(size, 40, replace=False), rng.choice(size, 400, replace=False)
    spacing = np.asarray(spacing_mm)
    grid = _CornerGrid(shape, spacing, (0, 1, 2))
    near = _near_features(query, features, grid, tolerance_mm)

    query_ijk = np.stack(np.unravel_index(query, shape), axis=1)
    feature_ijk = np.stack(np.unravel_index(features, shape), axis=1)
    distance_mm = np.sqrt((((query_ijk[:, None] - feature_ijk[None]) * spacing) ** 2).sum(axis=2)).min(axis=1)
    reach = np.asarray(_margin_vx(spacing, tolerance_mm))
    block_gap = np.abs(query_ijk[:, None] // reach - feature_ijk[None] // reach).max(axis=2).min(axis=1)
    assert near[distance_mm <= tolerance_mm].all() and (distance_mm <= tolerance_mm).any()
    assert not near[block_gap > 1].any() and (block_gap > 1).any()
    assert near[block_gap <= 1].all()


def test_corners_near_but_beyond_the_tolerance_are_struck_off_by_columns_with_exact_distances(monkeypatch):
    """A prediction shifted past the tolerance: the scan strikes off the corners with no feature in any column of
    the ball (one lookup per column, not per offset), and the distances stay DeepMind's."""
    import flare_eval.metrics as metrics

    grid = np.indices((44, 40, 36))
    gt = ((grid - np.array([22, 20, 18])[:, None, None, None]) ** 2).sum(axis=0) <= 14 ** 2
    pred = np.roll(gt, (5, -2, 1), axis=(0, 1, 2))
    spacing = (1.0, 0.9, 1.2)
    calls = []
    original = metrics._any_within_ball
    monkeypatch.setattr(metrics, "_any_within_ball", lambda *args: calls.append(1) or original(*args))
    ours = surface_distances(gt, pred, spacing, max_distance_mm=3.0)
    expected = deepmind.compute_surface_distances(gt, pred, spacing)
    assert len(calls) == 2  # both directions
    for mine, theirs in ((ours.distances_gt_to_pred_mm, expected["distances_gt_to_pred"]),
                         (ours.distances_pred_to_gt_mm, expected["distances_pred_to_gt"])):
        within = np.sort(theirs)[np.sort(theirs) <= 3.0]  # ours are truncated at the tolerance (inf beyond)
        assert mine.size == theirs.size and mine.size - within.size > 1000
        np.testing.assert_array_equal(np.sort(mine)[:within.size], within)
        assert np.isinf(np.sort(mine)[within.size:]).all()
    assert normalized_surface_dice(gt, pred, spacing, 3.0) == pytest.approx(deepmind_nsd(gt, pred, spacing, 3.0),
                                                                            abs=1e-12)
