"""The distorted MNIST sets: parameters in range, digits kept whole, determinism, caching."""
import os

import numpy as np
import pytest

from stngluon import distort
from stngluon import geometry


def blobs(n, seed=0):
    """Smooth stand-ins for digits: (n, 1, 28, 28) Gaussian strokes inside the central 20x20."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 1, 28, 28), np.float32)
    for k in range(n):
        for _ in range(3):
            cx, cy = rng.uniform(9, 18, 2)
            images[k, 0] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 6.0)
    return np.clip(images, 0, 1)


def mass(images):
    return images.reshape(len(images), -1).sum(1)


@pytest.fixture(scope='module')
def digits():
    return blobs(200)


@pytest.mark.parametrize('name, size', [('r', 28), ('rts', 42), ('p', 28), ('e', 28), ('tc', 60),
                                        ('perturbed', 28)])
def test_each_set_has_its_size_and_pixels_stay_in_range(digits, name, size):
    out, _ = distort.distort(name, digits, seed=1)
    assert out.shape == (len(digits), 1, size, size) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (mass(out) > 0).all()


@pytest.mark.parametrize('name', ['r', 'rts', 'p', 'e', 'tc', 'perturbed'])
def test_the_same_seed_gives_identical_bytes_and_another_seed_differs(digits, name):
    a, b = distort.distort(name, digits, seed=3)[0], distort.distort(name, digits, seed=3)[0]
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, distort.distort(name, digits, seed=4)[0])


def test_r_rotates_by_an_angle_within_90_degrees_that_theta_gives_back(digits):
    out, info = distort.distort('r', digits, seed=0)
    theta = info['theta']
    angle = np.rad2deg(np.arctan2(theta[:, 0, 1], theta[:, 0, 0]))
    np.testing.assert_allclose(angle, info['angle'], atol=1e-6)
    assert np.abs(angle).max() <= 90 and np.abs(angle).max() > 80  # the range is used
    np.testing.assert_allclose(np.linalg.det(theta[:, :, :2]), 1, atol=1e-6)  # no scaling
    np.testing.assert_allclose(mass(out), mass(digits), rtol=0.05)  # ink is kept


def test_rts_angle_and_scale_come_back_from_theta_and_the_digit_stays_inside(digits):
    out, info = distort.distort('rts', digits, seed=0)
    linear = info['theta'][:, :, :2] / (20.5 / 13.5)  # undo the canvas/digit normalisation
    scale = 1 / np.sqrt(np.linalg.det(linear))
    angle = np.rad2deg(np.arctan2(linear[:, 0, 1], linear[:, 0, 0]))
    np.testing.assert_allclose(scale, info['scale'], rtol=1e-6)
    np.testing.assert_allclose(angle, info['angle'], atol=1e-6)
    assert 0.7 <= scale.min() and scale.max() <= 1.2 and np.abs(angle).max() <= 45
    # Whole digit on the canvas: its ink mass is the original's times scale^2 ...
    np.testing.assert_allclose(mass(out), mass(digits) * scale ** 2, rtol=0.05)
    # ... and both the position and the border show it is not cut.
    border = np.concatenate([out[:, 0, 0], out[:, 0, -1], out[:, 0, :, 0], out[:, 0, :, -1]], 1)
    assert border.max() < 0.1
    spread = np.abs(info['shift']).max(0)
    assert (spread > 5).all()  # the position really varies


@pytest.mark.parametrize('name', ['p', 'e'])
def test_p_and_e_scale_within_range_and_keep_most_of_the_ink(digits, name):
    out, info = distort.distort(name, digits, seed=0)
    assert 0.75 <= info['scale'].min() and info['scale'].max() <= 1.0
    ratio = mass(out) / (mass(digits) * info['scale'] ** 2)
    assert 0.5 < np.median(ratio) < 1.5


@pytest.mark.parametrize('name, pixels', [('p', 3.5), ('p-5px', 5), ('p-3.5px', 3.5)])
def test_p_reads_each_output_corner_from_a_moved_input_corner(digits, name, pixels):
    _, info = distort.distort(name, digits, seed=0)
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]])
    read = np.einsum('nij,kj->nki', info['homography'], np.concatenate([corners, np.ones((4, 1))], 1))
    np.testing.assert_allclose(read[..., :2] / read[..., 2:], info['corners'], atol=1e-9)
    offsets = (info['corners'] - corners / info['scale'][:, None, None]) * 13.5  # in pixels
    assert 0.75 * pixels < offsets.std() < 1.25 * pixels   # corner_std


def test_perturbed_is_the_ic_stn_codes_homography_of_four_corners_moved_and_shifted(digits):
    """Their genPerturbations: per image dX = 0.25 N(0, 1)_4 + 0.25 N(0, 1) (one shift for
    the four corners), dY likewise; the homography fitted by their 8x8 system takes the
    canonical corners to the moved ones, and the output's corner reads the moved one."""
    _, info = distort.distort('perturbed', digits, seed=0)
    h, moved = info['homography'], info['corners']
    X, Y = np.array([-1, -1, 1, 1.]), np.array([-1, 1, 1, -1.])     # their canon4pts
    for k in range(0, len(h), 37):
        u, v = moved[k, :, 0], moved[k, :, 1]
        o, i = np.zeros(4), np.ones(4)
        a = np.concatenate([np.stack([X, Y, i, o, o, o, -X * u, -Y * u], -1),
                            np.stack([o, o, o, X, Y, i, -X * v, -Y * v], -1)])
        theirs = np.linalg.solve(a, np.concatenate([u, v]))        # pPert + identity
        np.testing.assert_allclose(h[k].ravel()[:8], theirs, atol=1e-9)
    displacement = moved - np.stack([X, Y], -1)                    # (N, 4, 2)
    shared = displacement.mean(1)                                  # the shift + a quarter of the noise
    assert 0.2 < (displacement - shared[:, None]).std() / np.sqrt(3 / 4) < 0.3     # pert_scale
    assert 0.2 < np.sqrt(shared.var() - 0.25 ** 2 / 4) < 0.3                     # trans_scale


def test_every_set_keeps_the_random_stream_its_cache_and_committed_results_were_made_with():
    # Pinned numbers, the places the sets had in DATASETS when their bytes were first made;
    # a new set takes a new number, so no other set's bytes change.
    assert distort.STREAM == {'mnist': 0, 'r': 1, 'rts': 2, 'p': 3, 'e': 4, 'tc': 5,
                              'p-forward': 6, 'p-3.5px': 7, 'p-box': 8, 'addition': 9,
                              'p-5px': 3, 'perturbed': 10}
    assert sorted(distort.STREAM) == sorted(distort.DATASETS)


def test_inserting_a_set_changes_no_other_sets_draws(digits, monkeypatch):
    before = {name: distort.distort(name, digits[:4], seed=0)[1] for name in ('r', 'e', 'p-box')}
    monkeypatch.setattr(distort, 'DATASETS', ['new'] + distort.DATASETS)
    monkeypatch.setitem(distort.STREAM, 'new', max(distort.STREAM.values()) + 1)
    for name, info in before.items():
        after = distort.distort(name, digits[:4], seed=0)[1]
        for key in info:
            np.testing.assert_array_equal(after[key], info[key], err_msg=f'{name} {key}')


def test_p_5px_is_p_up_to_version_3_on_the_same_random_stream(digits):
    old, old_info = distort.distort('p-5px', digits, seed=0)
    new, new_info = distort.distort('p', digits, seed=0)
    np.testing.assert_array_equal(old_info['scale'], new_info['scale'])    # the same draws ...
    assert distort.DEFAULTS['p-5px'] == dict(distort.DEFAULTS['p'], corner_std=5.0)   # ... but 5 px


def test_p_forward_sends_the_shrunk_image_corners_to_moved_ones(digits):
    _, info = distort.distort('p-forward', digits, seed=0)
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]])
    # Sampling is the inverse: each moved corner of the output reads the input's corner
    # before the shrink.
    moved = np.concatenate([info['corners'], np.ones((len(digits), 4, 1))], 2)
    read = np.einsum('nij,nkj->nki', info['homography'], moved)
    np.testing.assert_allclose(read[..., :2] / read[..., 2:], corners / info['scale'][:, None, None],
                               atol=1e-9)
    assert 3.5 < ((info['corners'] - corners) * 13.5).std() < 6.5   # corner_std 5 px


def test_a_box_is_widened_about_its_middle_to_at_least_14_px():
    corners = distort.box_corners(np.array([[-10., 10., 1., 5.]])) * 13.5
    np.testing.assert_allclose(corners[0], [[-10, -4], [10, -4], [-10, 10], [10, 10]])


def test_p_box_moves_the_corners_of_the_digits_ink_box(digits):
    _, info = distort.distort('p-box', digits, seed=0)
    box = distort.box_corners(distort.ink_box(digits))
    output = np.concatenate([box * info['scale'][:, None, None], np.ones((len(digits), 4, 1))], 2)
    read = np.einsum('nij,nkj->nki', info['homography'], output)
    offsets = (read[..., :2] / read[..., 2:] - box) * 13.5
    np.testing.assert_allclose(read[..., :2] / read[..., 2:], info['corners'], atol=1e-9)
    assert 3.5 < offsets.std() < 6.5


@pytest.mark.parametrize('name', ['p', 'p-5px', 'p-forward', 'p-3.5px', 'p-box'])
def test_every_reading_of_p_shows_every_output_pixel_the_front_of_the_page(name):
    page = np.ones((300, 1, 28, 28), np.float32)
    page[:, :, :3] = page[:, :, :, :3] = 0                  # some margin for the ink box
    _, info = distort.distort(name, page, seed=1)
    points = np.concatenate([geometry.target_points((28, 28)), np.ones((784, 1))], 1).T
    assert ((info['homography'] @ points)[:, 2] > 0).all() and distort.facing(info['homography']).all()


@pytest.mark.parametrize('name, params', [
    ('r', {'rotation': 0}),
    ('p', {'scale_min': 1, 'scale_max': 1, 'corner_std': 0}),
    ('p-forward', {'scale_min': 1, 'scale_max': 1, 'corner_std': 0}),
    ('p-box', {'scale_min': 1, 'scale_max': 1, 'corner_std': 0}),
    ('e', {'scale_min': 1, 'scale_max': 1, 'tps_std': 0}),
    ('perturbed', {'pert_scale': 0, 'trans_scale': 0}),
])
def test_with_zero_distortion_a_set_returns_the_digits_unchanged(digits, name, params):
    out, _ = distort.distort(name, digits, seed=0, **params)
    np.testing.assert_allclose(out, digits, atol=1e-5)


def test_tps_interpolates_its_control_values_exactly():
    control = np.stack(np.meshgrid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 4)), -1).reshape(-1, 2)
    values = np.random.RandomState(0).randn(16, 2)
    np.testing.assert_allclose(geometry.tps_basis(control, control) @ values, values, atol=1e-9)


def test_tc_places_the_whole_digit_and_six_clutter_patches(digits):
    out, info = distort.distort('tc', digits, seed=0)
    x, y = info['shift'].T
    assert x.min() >= 0 and y.min() >= 0 and x.max() <= 32 and y.max() <= 32
    for k in range(len(digits)):  # clutter is combined with max: the digit is intact
        window = out[k, 0, y[k]:y[k] + 28, x[k]:x[k] + 28]
        assert (window >= digits[k, 0] - 1e-6).all()
    clutter = mass(out) - mass(digits)
    assert (clutter >= 0).all() and np.median(clutter) > 0
    plain = distort.distort('tc', digits, seed=0, patches=0)[0]
    np.testing.assert_allclose(mass(plain), mass(digits), rtol=1e-5)


@pytest.mark.parametrize('name, params, message', [
    ('rot', {}, "unknown dataset 'rot'"),
    ('rts', {'scale_min': -0.5}, 'scale_min = -0.5 must be a finite number >= 0'),
    ('rts', {'scale_min': 1.1, 'scale_max': 0.9}, 'need 0 < scale_min <= scale_max'),
    ('rts', {'canvas': 30}, 'canvas 30 is smaller than the largest scaled digit'),
    ('tc', {'canvas': 20}, 'canvas 20 is smaller than the 28 px digit'),
    ('r', {'angle': 10}, "unknown parameter(s) ['angle']"),
    ('p', {'warp': 'sideways'}, "warp = 'sideways' must be one of backward, forward"),
])
def test_bad_values_are_rejected_clearly(digits, name, params, message):
    with pytest.raises(ValueError) as error:
        distort.distort(name, digits, seed=0, **params)
    assert message in str(error.value)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(distort, 'CACHE_DIR', str(tmp_path))
    labels = np.arange(200) % 10
    return tmp_path, (blobs(200, 1), labels, blobs(50, 2), labels[:50])


def test_a_set_is_cached_once_and_read_back_as_the_same_bytes(cache, capsys):
    folder, digits = cache
    first = distort.load('r', digits, seed=5)
    assert os.listdir(folder) == [f'r-seed5-v{distort.VERSION}.npz']
    assert 'generating' in capsys.readouterr().out
    again = distort.load('r', digits, seed=5)
    assert 'generating' not in capsys.readouterr().out
    for a, b in zip(first, again):
        assert a.tobytes() == b.tobytes()
    assert first[0].shape == (200, 1, 28, 28) and not np.array_equal(first[0][:50], first[2])


def test_a_cache_made_with_other_parameters_is_regenerated(cache, capsys):
    folder, digits = cache
    default = distort.load('rts', digits)[2]
    smaller = distort.load('rts', digits, scale_max=0.8)[2]
    assert 'other parameters: regenerating' in capsys.readouterr().out
    assert mass(smaller).mean() < mass(default).mean()
    assert os.listdir(folder) == [f'rts-seed0-v{distort.VERSION}.npz']


def test_a_corrupt_cache_is_regenerated_not_trusted(cache, capsys):
    folder, digits = cache
    good = distort.load('e', digits)[0]
    path = folder / f'e-seed0-v{distort.VERSION}.npz'
    path.write_bytes(path.read_bytes()[:1000])
    capsys.readouterr()
    again = distort.load('e', digits)[0]
    assert 'unreadable' in capsys.readouterr().out
    assert again.tobytes() == good.tobytes()


def test_p_never_folds_the_page_so_every_output_pixel_sees_it_from_the_front():
    page = np.ones((500, 1, 28, 28), np.float32)
    _, info = distort.distort('p', page, seed=3)
    assert distort.convex(info['corners']).all()
    points = np.concatenate([geometry.target_points((28, 28)), np.ones((784, 1))], 1).T
    w = (info['homography'] @ points)[:, 2]
    assert (w > 0).all()


def test_a_folded_quadrilateral_is_not_convex():
    square = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], float)
    folded = square.copy()
    folded[3] = [-0.9, -0.9]                                 # the corner crossed the diagonal
    assert distort.convex(np.stack([square, square[::-1], folded])).tolist() == [True, True, False]


@pytest.mark.parametrize('change', ['fewer', 'shape', 'dtype'])
def test_a_cache_with_the_right_stamp_but_wrong_arrays_is_regenerated_not_trusted(cache, capsys,
                                                                                  change):
    folder, digits = cache
    good = distort.load('r', digits)
    path = str(folder / f'r-seed0-v{distort.VERSION}.npz')
    with np.load(path) as cached:
        saved = dict(cached)
    saved['train_x'] = {'fewer': saved['train_x'][:10], 'shape': saved['train_x'][:, :, :14],
                        'dtype': saved['train_x'].astype(np.float32)}[change]
    np.savez(path, **saved)
    capsys.readouterr()
    again = distort.load('r', digits)
    assert 'images where [(200, 1, 28, 28), (50, 1, 28, 28)] uint8 belong: regenerating' in \
        capsys.readouterr().out
    assert again[0].tobytes() == good[0].tobytes() and len(again[0]) == len(again[1])


def test_a_folder_where_the_cache_belongs_is_a_clear_error(cache):
    folder, digits = cache
    (folder / f'r-seed0-v{distort.VERSION}.npz').mkdir()
    with pytest.raises(distort.CacheError, match='is a folder, where the cache file of set r belongs'):
        distort.load('r', digits)


# ---- MNIST addition (appendix A.1) ------------------------------------------------------------

def test_addition_pairs_each_digit_with_a_partner_and_labels_the_pair_with_their_sum(digits):
    labels = np.arange(len(digits)) % 10
    pairs, sums = distort.pair(digits, labels, seed=(0, 0))
    assert pairs.shape == (len(digits), 2, 28, 28) and sums.max() <= 18
    np.testing.assert_array_equal(pairs[:, :1], digits)                 # channel 0: the digit
    partner = [np.flatnonzero((digits[:, 0] == p).all((1, 2)))[0] for p in pairs[:, 1]]
    np.testing.assert_array_equal(sums, labels + labels[partner])       # channel 1: its partner
    assert len(set(partner)) == len(digits)                             # a permutation
    again = distort.pair(digits, labels, seed=(0, 0))[1]
    np.testing.assert_array_equal(again, sums)                          # the seed decides


def test_each_addition_channel_holds_one_whole_rts_digit(digits):
    pairs, _ = distort.pair(digits, np.zeros(len(digits), int), seed=(0, 0))
    out, info = distort.distort('addition', pairs, seed=0)
    assert out.shape == (len(digits), 2, 42, 42) and distort.image_shape('addition') == (2, 42, 42)
    assert distort.num_classes('addition') == 19 and distort.num_classes('rts') == 10
    for k in range(2):
        # each channel's ink is its own digit's, scaled (none lost off the canvas) ...
        np.testing.assert_allclose(mass(out[:, k:k + 1]), mass(pairs[:, k:k + 1]) * info['scale'][:, k] ** 2,
                                   rtol=0.05)
        border = np.concatenate([out[:, k, 0], out[:, k, -1], out[:, k, :, 0], out[:, k, :, -1]], 1)
        assert border.max() < 0.1
    # ... and the two digits are distorted independently
    assert not np.allclose(info['angle'][:, 0], info['angle'][:, 1])
    assert not np.allclose(info['shift'][:, 0], info['shift'][:, 1])


def test_the_addition_set_keeps_its_pairs_in_the_cache_and_for_fresh_distortions(cache):
    folder, digits = cache
    train_x, train_y, test_x, test_y = distort.load('addition', digits)
    assert train_x.shape == (200, 2, 42, 42) and test_x.shape == (50, 2, 42, 42)
    np.testing.assert_array_equal(train_y, distort.pair(digits[0], digits[1], (0, 0))[1])
    again = distort.load('addition', digits)                           # from the cache
    assert again[0].tobytes() == train_x.tobytes() and (again[1] == train_y).all()
    fresh = distort.fresh_training_set('addition', distort.pair(digits[0], digits[1], (0, 0))[0],
                                       seed=0, epoch=3)
    assert fresh.shape == train_x.shape and not np.allclose(fresh, train_x)
