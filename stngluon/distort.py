"""The paper's distorted MNIST sets (Jaderberg et al. 2015, section 4.1 and appendix A).

    R    rotation uniform in [-rotation, +rotation] degrees; 28x28
    RTS  rotation in [-rotation, +rotation], scale in [scale_min, scale_max], placed at a
         uniformly random position in a canvas x canvas image (the digit stays inside)
    P    scale in [scale_min, scale_max], then a projective warp: the output's corners read
         the input at its corners moved by Gaussian offsets of corner_std = 3.5 pixels
         (redrawn if they fold); 28x28. Other readings of the paper, each with 5 px
         offsets: p-5px (P up to version 2), p-forward (the homography sends the corners
         to the moved ones), p-box (the corners of the digit's ink box, not of the
         image); p-3.5px is P's reading on another random stream (a recipe pilot)
    addition  MNIST addition (appendix A.1): two digits (``pair``), each distorted as RTS
         on its own canvas x canvas image, as the two channels of one image; label = their
         sum (19 classes)
    E    scale in [scale_min, scale_max], then a thin-plate-spline warp whose control
         points on a tps_grid x tps_grid grid move by Gaussian offsets of tps_std pixels
    TC   the digit at a uniformly random position in a canvas x canvas image, plus
         `patches` random patch x patch crops of other digits of the same split
    perturbed  the benchmark of the IC-STN paper (Lin & Lucey, CVPR 2017; its code's
         genPerturbations): each output corner reads the input at that corner moved by
         Gaussian noise of pert_scale plus a translation shared by the four corners, of
         trans_scale, both in normalised coordinates (0.25 = 3.4 px); the homography
         through the four pairs; 28x28, nothing redrawn

Every warp is applied to a whole batch at once: the sampling grid is computed in numpy
(backward mapping, MXNet's normalised coordinates, x first) and the images are sampled
with ``mx.nd.BilinearSampler`` (zero padding). Sets are cached under data/distorted/ as
one .npz per set, seed and generator version, with the parameters stored inside; a cache
that does not load or was made with other parameters is regenerated.
"""
import json
import os
import zipfile
from collections import namedtuple

import numpy as np

from stngluon import ROOT, atomic, mnist
from stngluon.geometry import control_points, target_points, tps_basis

VERSION = 3   # 3: P's corner noise 3.5 px (2: 5 px, now p-5px); 2: P reads the input
              # through a moved-corner quadrilateral (1 warped it)

CACHE_DIR = os.path.join(ROOT, 'data', 'distorted')
CHUNK = 10000  # images warped per BilinearSampler call
CHOICES = {'warp': ('backward', 'forward'), 'frame': ('image', 'box')}   # the non-numeric ones


def check_params(name, params):
    """The full parameter dict for set ``name``: defaults overridden by ``params``."""
    if name not in DEFAULTS:
        raise ValueError(f'unknown dataset {name!r}; choose one of {", ".join(DATASETS)}')
    unknown = set(params) - set(DEFAULTS[name])
    if unknown:
        raise ValueError(f'{name}: unknown parameter(s) {sorted(unknown)}; '
                         f'it takes {sorted(DEFAULTS[name])}')
    p = dict(DEFAULTS[name], **params)
    for key, value in p.items():
        if key in CHOICES:
            if value not in CHOICES[key]:
                raise ValueError(f'{name}: {key} = {value!r} must be one of {", ".join(CHOICES[key])}')
        elif not np.isfinite(value) or value < 0:
            raise ValueError(f'{name}: {key} = {value} must be a finite number >= 0')
    if 'scale_min' in p:
        if not 0 < p['scale_min'] <= p['scale_max']:
            raise ValueError(f'{name}: need 0 < scale_min <= scale_max, '
                             f'got {p["scale_min"]} and {p["scale_max"]}')
    if name == 'rts' and p['canvas'] < np.ceil(28 * p['scale_max']):
        raise ValueError(f'rts: canvas {p["canvas"]} is smaller than the largest scaled digit '
                         f'(28 x scale_max {p["scale_max"]} = {28 * p["scale_max"]:.1f} px)')
    if name == 'tc' and p['canvas'] < 28:
        raise ValueError(f'tc: canvas {p["canvas"]} is smaller than the 28 px digit')
    if name == 'tc' and not 1 <= p['patch'] <= 28:
        raise ValueError(f'tc: patch {p["patch"]} must be between 1 and 28 px')
    if name == 'e' and int(p['tps_grid']) < 2:
        raise ValueError(f'e: tps_grid {p["tps_grid"]} must be >= 2')
    return p


def image_shape(name):
    """(C, H, W) of the images of set ``name``, without making them."""
    size = int(DEFAULTS[name].get('canvas', 28))
    return (SETS[name].channels, size, size)


def num_classes(name):
    """The number of labels of set ``name``: 19 sums for 'addition', else 10 digits."""
    return SETS[name].classes


def describe(name, params=None):
    """What set ``name`` does to a digit, in words, from its parameters (the README's table)."""
    p = dict(DEFAULTS[name], **(params or {}))
    scale = 'scale ' + '-'.join(f'{p[k]:.1f}' if round(p[k], 1) == p[k] else f'{p[k]:g}'
                                for k in ('scale_min', 'scale_max') if k in p)
    kind = SETS[name].generate
    if kind is distort_r:
        return f'rotation in ±{p["rotation"]:g}°'
    if kind in (distort_rts, distort_addition):
        rts = (f'rotation in ±{p["rotation"]:g}°, {scale}, random position on a '
               f'{p["canvas"]}x{p["canvas"]} canvas')
        return rts if kind is distort_rts else f'two digits, each {rts}, as two channels; ' \
                                              'the label is their sum'
    if kind is distort_p:
        corners = "the digit's ink box's corners" if p['frame'] == 'box' else 'corners'
        how = 'sent to' if p['warp'] == 'forward' else 'read at'
        return (f'{scale}, then a projective warp: {corners} {how} points moved by Gaussian '
                f'noise of {p["corner_std"]:g} px')
    if kind is distort_e:
        return (f'{scale}, then a thin-plate-spline warp: {p["tps_grid"] ** 2} control points '
                f'moved by Gaussian noise of {p["tps_std"]:g} px')
    if kind is distort_perturbed:
        px = lambda k: f'{p[k]:g} ({p[k] * 13.5:.1f} px)'   # noqa: E731  (normalised -> pixels)
        return (f'a homography: corners read at points moved by Gaussian noise of '
                f'{px("pert_scale")} plus a shared translation of {px("trans_scale")}')
    if kind is distort_tc:
        return (f'the digit at a random position on a {p["canvas"]}x{p["canvas"]} canvas, plus '
                f'{p["patches"]} clutter patches of {p["patch"]}x{p["patch"]} px cut from other digits')
    return 'MNIST as it is'


def pair(images, labels, seed):
    """MNIST addition's inputs: every digit of ``images`` (N, 1, 28, 28) with a partner
    drawn by ``seed`` (a random permutation), as (N, 2, 28, 28), and the sums of their
    ``labels`` (N,). The pairs depend on the seed only, so a set's fresh distortions keep
    its pairs and labels."""
    partner = np.random.default_rng([*np.atleast_1d(seed), STREAM['addition'],
                                     99]).permutation(len(images))
    return np.concatenate([images, images[partner]], 1), labels + labels[partner]


def sample(images, grid_of, size):
    """Bilinearly sample ``images`` (N, 1, 28, 28) onto a size x size grid, in chunks.

    ``grid_of(chunk)`` gives the (n, 2, P) input coordinates (x, y; normalised) of the
    P = size * size output pixels for the images in slice ``chunk``.
    """
    from stngluon import compat  # noqa: F401  (before mxnet; imported here: reading a cached set needs none)
    import mxnet as mx
    out = np.empty((len(images), 1, size, size), np.float32)
    for i in range(0, len(images), CHUNK):
        chunk = slice(i, i + CHUNK)
        grid = grid_of(chunk).astype(np.float32).reshape(-1, 2, size, size)
        out[chunk] = mx.nd.BilinearSampler(mx.nd.array(images[chunk]), mx.nd.array(grid)).asnumpy()
    return np.clip(out, 0, 1)


def warp_affine(images, theta, size):
    """Sample with theta (N, 2, 3) mapping output normalised coordinates to input ones."""
    points = target_points((size, size)).T.astype(np.float32)                     # (2, P)
    theta = theta.astype(np.float32)
    return sample(images, lambda c: theta[c, :, :2] @ points + theta[c, :, 2:], size)


def rotation_scale(angle, scale):
    """Backward 2x2 matrices (N, 2, 2) for a forward rotation by ``angle`` and scaling."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2) / scale[:, None, None]


def ink_box(images):
    """Per image, the ink's extent in pixels from the 28x28 centre: (N, 4) x0, x1, y0, y1."""
    ink = images[:, 0] > 0.1
    cols, rows = ink.any(axis=1), ink.any(axis=2)
    first = lambda m: np.argmax(m, axis=1)
    last = lambda m: m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
    return np.stack([first(cols), last(cols), first(rows), last(rows)], 1) - 13.5


def box_corners(box, least=14):
    """Normalised corners (N, 4, 2) TL, TR, BL, BR of pixel boxes (N, 4) x0, x1, y0, y1
    from the 28x28 centre, each side widened about its middle to at least ``least`` px."""
    middle, half = (box[:, ::2] + box[:, 1::2]) / 2, np.abs(box[:, 1::2] - box[:, ::2]) / 2
    half = np.maximum(half, least / 2)
    (x0, y0), (x1, y1) = ((middle - half) / 13.5).T, ((middle + half) / 13.5).T
    return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1),
                     np.stack([x0, y1], 1), np.stack([x1, y1], 1)], 1)


def distort_r(images, rng, rotation):
    n = len(images)
    angle = np.deg2rad(rng.uniform(-rotation, rotation, n))
    theta = np.concatenate([rotation_scale(angle, np.ones(n)), np.zeros((n, 2, 1))], axis=2)
    return warp_affine(images, theta, 28), {'angle': np.rad2deg(angle), 'theta': theta}


def distort_rts(images, rng, rotation, scale_min, scale_max, canvas):
    n, canvas = len(images), int(canvas)
    angle = np.deg2rad(rng.uniform(-rotation, rotation, n))
    scale = rng.uniform(scale_min, scale_max, n)
    # Extent of the rotated, scaled ink box around the digit centre, in canvas pixels;
    # the translation is uniform over the positions that keep all of it at least one
    # pixel inside the canvas border, so that no ink is cut or touches the edge.
    x0, x1, y0, y1 = ink_box(images).T
    corners = np.stack([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], 0)          # (4, 2, N)
    c, s = np.cos(angle), np.sin(angle)
    cx = scale * (c * corners[:, 0] - s * corners[:, 1])
    cy = scale * (s * corners[:, 0] + c * corners[:, 1])
    half = (canvas - 1) / 2
    room = half - 1
    shift = lambda lo, hi: np.where(lo <= hi, rng.uniform(lo, hi), (lo + hi) / 2)
    tx = shift(-room - cx.min(0), room - cx.max(0))
    ty = shift(-room - cy.min(0), room - cy.max(0))
    # Backward map: canvas pixel u -> digit pixel R(-angle)(u - t) / scale; normalise both.
    linear = rotation_scale(angle, scale) * (half / 13.5)
    offset = -np.einsum('nij,nj->ni', linear, np.stack([tx, ty], 1) / half)
    theta = np.concatenate([linear, offset[:, :, None]], axis=2)
    return warp_affine(images, theta, canvas), {'angle': np.rad2deg(angle), 'scale': scale,
                                                'shift': np.stack([tx, ty], 1), 'theta': theta}


def homographies(source, target):
    """(N, 3, 3) homographies mapping each of the 4 ``source`` points to ``target`` (N, 4, 2)."""
    n = len(source)
    a = np.zeros((n, 8, 8))
    x, y = source[..., 0], source[..., 1]
    u, v = target[..., 0], target[..., 1]
    a[:, 0::2, 0], a[:, 0::2, 1], a[:, 0::2, 2] = x, y, 1
    a[:, 0::2, 6], a[:, 0::2, 7] = -x * u, -y * u
    a[:, 1::2, 3], a[:, 1::2, 4], a[:, 1::2, 5] = x, y, 1
    a[:, 1::2, 6], a[:, 1::2, 7] = -x * v, -y * v
    b = np.stack([u, v], -1).reshape(n, 8)
    h = np.linalg.solve(a, b[..., None])[..., 0]
    return np.concatenate([h, np.ones((n, 1))], 1).reshape(n, 3, 3)


def convex(quads):
    """(N,) True where the quadrilateral of corners (TL, TR, BL, BR) (N, 4, 2) is convex:
    its edges, walked around, all turn the same way."""
    ring = quads[:, [0, 1, 3, 2]]
    edges = np.roll(ring, -1, axis=1) - ring
    following = np.roll(edges, -1, axis=1)
    turns = edges[..., 0] * following[..., 1] - edges[..., 1] * following[..., 0]
    return (turns > 0).all(1) | (turns < 0).all(1)


def facing(h):
    """(N,) True where the homographies ``h`` (N, 3, 3), output -> input, keep w > 0 on the
    whole output square (w is linear: its four corners decide), so that no output pixel
    sees the page from behind or at infinity."""
    corners = np.array([[-1, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]], float).T
    return ((h @ corners)[:, 2] > 0).all(1)


def distort_p(images, rng, scale_min, scale_max, corner_std, warp, frame):
    n = len(images)
    scale = rng.uniform(scale_min, scale_max, n)
    square = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], float)
    if frame == 'image':
        quad = np.broadcast_to(square, (n, 4, 2))
    else:   # the digit's ink box after the shrink, in output terms
        quad = box_corners(ink_box(images)) * scale[:, None, None]

    # backward: each corner of the frame reads the input at that corner divided by the
    # scale (the digit shrinks by `scale`), moved by a Gaussian offset.
    # forward: the digit shrinks by `scale`, then a homography sends each corner of the
    # frame to itself moved by the offset; the sampling grid is its inverse.
    # Offsets that fold the quadrilateral (a corner across the opposite diagonal) or turn
    # the page away from part of the output are drawn again.
    def draw(q, s):
        noise = rng.normal(0, corner_std / 13.5, q.shape)
        moved = (q / s[:, None, None] if warp == 'backward' else q) + noise
        if warp == 'backward':
            return moved, homographies(q, moved)                        # output -> input
        unshrink = np.zeros((len(s), 3, 3))
        unshrink[:, 0, 0] = unshrink[:, 1, 1] = 1 / s
        unshrink[:, 2, 2] = 1
        return moved, unshrink @ homographies(moved, q)

    moved, h = draw(quad, scale)
    redo = ~(convex(moved) & facing(h))
    while redo.any():
        moved[redo], h[redo] = draw(quad[redo], scale[redo])
        redo = ~(convex(moved) & facing(h))
    points = np.concatenate([target_points((28, 28)), np.ones((28 * 28, 1))], 1).T   # (3, P)

    def grid_of(chunk):
        source = h[chunk] @ points
        return source[:, :2] / source[:, 2:]   # facing: w > 0 on the whole output

    return sample(images, grid_of, 28), {'scale': scale, 'corners': moved, 'homography': h}


def distort_e(images, rng, scale_min, scale_max, tps_grid, tps_std):
    n, g = len(images), int(tps_grid)
    scale = rng.uniform(scale_min, scale_max, n)
    control = control_points(g)                                             # (K, 2) x, y
    offsets = rng.normal(0, tps_std / 13.5, (n, g * g, 2))
    basis = tps_basis(control, target_points((28, 28))).T                       # (K, P)
    # Backward map: output control point c reads the input at (c + offset) / scale.
    source = ((control + offsets) / scale[:, None, None]).transpose(0, 2, 1)  # (N, 2, K)
    return sample(images, lambda c: source[c] @ basis, 28), {'scale': scale, 'offsets': offsets}


def distort_perturbed(images, rng, pert_scale, trans_scale):
    n = len(images)
    square = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], float)   # their canon4pts
    moved = square + np.stack([                                      # dX, then dY
        rng.normal(0, 1, (n, 4)) * pert_scale + rng.normal(0, 1, (n, 1)) * trans_scale
        for _ in range(2)], -1)
    h = homographies(np.broadcast_to(square, (n, 4, 2)), moved)     # output -> input
    points = np.concatenate([target_points((28, 28)), np.ones((28 * 28, 1))], 1).T   # (3, P)

    def grid_of(chunk):
        source = h[chunk] @ points
        return source[:, :2] / source[:, 2:]

    return sample(images, grid_of, 28), {'corners': moved, 'homography': h}


def paste(canvas, images, x, y, combine=np.maximum):
    """Paste ``images`` (N, h, w) into ``canvas`` (N, H, W) with top-left corners (x, y)."""
    n, h, w = images.shape
    rows = (y[:, None] + np.arange(h))[:, :, None]
    cols = (x[:, None] + np.arange(w))[:, None, :]
    index = np.arange(n)[:, None, None]
    canvas[index, rows, cols] = combine(canvas[index, rows, cols], images)


def distort_tc(images, rng, canvas, patches, patch):
    n, canvas, patch = len(images), int(canvas), int(patch)
    out = np.zeros((n, canvas, canvas), np.float32)
    x, y = rng.integers(0, canvas - 28, n, endpoint=True), rng.integers(0, canvas - 28, n, endpoint=True)
    paste(out, images[:, 0], x, y)
    for _ in range(int(patches)):
        # A crop of another digit of this split, from inside its central 20x20 box
        # (where MNIST's strokes are), pasted anywhere on the canvas.
        other = (np.arange(n) + rng.integers(1, n, n)) % n
        lo, hi = 4, max(4, 24 - patch)
        cx, cy = rng.integers(lo, hi, n, endpoint=True), rng.integers(lo, hi, n, endpoint=True)
        crop = images[other[:, None, None], 0, (cy[:, None] + np.arange(patch))[:, :, None],
                      (cx[:, None] + np.arange(patch))[:, None, :]]
        paste(out, crop, rng.integers(0, canvas - patch, n, endpoint=True),
              rng.integers(0, canvas - patch, n, endpoint=True))
    return out[:, None], {'shift': np.stack([x, y], 1)}


def distort_addition(images, rng, rotation, scale_min, scale_max, canvas):
    channels = [distort_rts(images[:, k:k + 1], rng, rotation, scale_min, scale_max, canvas)
                for k in range(images.shape[1])]
    return (np.concatenate([out for out, _ in channels], 1),
            {key: np.stack([info[key] for _, info in channels], 1) for key in channels[0][1]})


class DistortedSet(namedtuple('DistortedSet', 'params stream generate channels classes',
                               defaults=(1, 10))):
    """One distorted set: the defaults of its parameters (check_params), the id of its
    random stream (numpy's generator is seeded with (seed, stream); pinned, so that a new
    set, with a new number, changes no other set's bytes: the cache and the committed
    results rely on them), the function that makes it, (images, rng, **params) ->
    (distorted, info) (None: MNIST as it is), its channels (digits per image) and classes."""


P_PARAMS = {'scale_min': 0.75, 'scale_max': 1.0, 'corner_std': 3.5, 'warp': 'backward', 'frame': 'image'}
RTS_PARAMS = {'rotation': 45.0, 'scale_min': 0.7, 'scale_max': 1.2, 'canvas': 42}

# Every set: adding one is an entry here (and its function above, if it is a new kind).
SETS = {
    'mnist': DistortedSet({}, 0, None),
    'r': DistortedSet({'rotation': 90.0}, 1, distort_r),
    'rts': DistortedSet(RTS_PARAMS, 2, distort_rts),
    'p': DistortedSet(P_PARAMS, 3, distort_p),
    'e': DistortedSet({'scale_min': 0.75, 'scale_max': 1.0, 'tps_grid': 4, 'tps_std': 1.5}, 4,
                      distort_e),
    'tc': DistortedSet({'canvas': 60, 'patches': 6, 'patch': 6}, 5, distort_tc),
    # Other readings of the paper's P (docs/p-set-sources.md), as named sets:
    'p-forward': DistortedSet(dict(P_PARAMS, corner_std=5.0, warp='forward'), 6, distort_p),
    'p-3.5px': DistortedSet(P_PARAMS, 7, distort_p),
    'p-box': DistortedSet(dict(P_PARAMS, corner_std=5.0, frame='box'), 8, distort_p),
    # MNIST addition (appendix A.1): two digits, each RTS-distorted on its own, as the two
    # channels of one image; the label is their sum (0..18).
    'addition': DistortedSet(RTS_PARAMS, 9, distort_addition, channels=2, classes=19),
    'p-5px': DistortedSet(dict(P_PARAMS, corner_std=5.0), 3, distort_p),   # P up to version 2, on its stream
    # Beyond the paper: the IC-STN paper's perturbed MNIST (its code's default scales)
    'perturbed': DistortedSet({'pert_scale': 0.25, 'trans_scale': 0.25}, 10, distort_perturbed),
}
DATASETS = list(SETS)
DEFAULTS = {name: s.params for name, s in SETS.items()}
STREAM = {name: s.stream for name, s in SETS.items()}


def distort(name, images, seed, **params):
    """Distort ``images`` (N, C, 28, 28) in [0, 1] as set ``name``; deterministic in ``seed``
    (an int or a tuple of ints). C is 1, or 2 for 'addition' (``pair``'s digits).

    Returns ``(distorted (N, C, S, S) float32 in [0, 1], info)`` where ``info`` holds the
    sampled parameters (angles in degrees, scales, shifts, theta, ...) for inspection.
    """
    p = check_params(name, params)
    if SETS[name].generate is None:
        return images, {}
    rng = np.random.default_rng([*np.atleast_1d(seed), STREAM[name]])
    out, info = SETS[name].generate(images, rng, **p)
    return out.astype(np.float32), info


def cache_path(name, seed):
    return os.path.join(CACHE_DIR, f'{name}-seed{seed}-v{VERSION}.npz')


class CacheError(mnist.MNISTError):
    """A distorted set's cache path cannot hold the cache (the message says what to do)."""


Dataset = namedtuple('Dataset', 'train_x train_y test_x test_y digits')


def load_dataset(name, data_dir=None, seed=0):
    """Set ``name`` with the MNIST files of ``data_dir`` (``mnist.load_mnist``'s rules) and
    ``seed``, as a ``Dataset``: train_x, train_y, test_x, test_y (see ``load``) and digits,
    the undistorted training digits (for ``fresh_training_set``; paired for 'addition').
    Raises ``mnist.MNISTError`` for missing or corrupt MNIST files."""
    digits = mnist.load_mnist(data_dir)
    undistorted = pair(*digits[:2], (seed, 0))[0] if name == 'addition' else digits[0]
    return Dataset(*load(name, digits, seed), digits=undistorted)


def fresh_training_set(name, digits, seed, epoch):
    """The training ``digits`` distorted anew for ``epoch``: a stream of ``seed`` apart from
    the fixed training (seed, 0) and test (seed, 1) sets."""
    return distort(name, digits, (seed, 2, epoch))[0]


def load(name, digits, seed=0, **params):
    """(train_x, train_y, test_x, test_y) of set ``name``, from the cache or generated.

    ``digits`` is ``mnist.load_mnist()``'s result. The train and test sets are distorted
    with different streams of the same ``seed``; pixels are stored as uint8 (like MNIST)
    and returned as float32 in [0, 1].
    """
    p = check_params(name, params)
    train_x, train_y, test_x, test_y = digits
    if name == 'mnist':
        return train_x, train_y, test_x, test_y
    if name == 'addition':
        (train_x, train_y), (test_x, test_y) = (pair(train_x, train_y, (seed, 0)),
                                                pair(test_x, test_y, (seed, 1)))
    path, stamp = cache_path(name, seed), json.dumps({'version': VERSION, 'params': p}, sort_keys=True)
    if os.path.isdir(path):
        raise CacheError(f'{path} is a folder, where the cache file of set {name} belongs: '
                         f'move it away (the set is regenerated there)')
    shape = image_shape(name)
    try:
        with np.load(path, allow_pickle=False) as cached:
            arrays = cached['train_x'], cached['test_x']
            expected = [(len(train_y), *shape), (len(test_y), *shape)]
            if str(cached['stamp']) != stamp:
                print(f'{path} was made with other parameters: regenerating')
            elif [a.shape for a in arrays] != expected or any(a.dtype != np.uint8 for a in arrays):
                print(f'{path} holds {[a.shape for a in arrays]} {arrays[0].dtype} images where '
                      f'{expected} uint8 belong: regenerating')
            else:
                return arrays[0] / np.float32(255), train_y, arrays[1] / np.float32(255), test_y
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        print(f'{path} is unreadable ({e}): regenerating')
    print(f'generating {name} (seed {seed}) into {path}')
    train = distort(name, train_x, (seed, 0), **p)[0]
    test = distort(name, test_x, (seed, 1), **p)[0]
    to_bytes = lambda a: np.round(a * 255).astype(np.uint8)
    atomic.write_npz(path, stamp=np.array(stamp), train_x=to_bytes(train), test_x=to_bytes(test))
    return to_bytes(train) / np.float32(255), train_y, to_bytes(test) / np.float32(255), test_y
