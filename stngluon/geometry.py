"""Geometry shared by the model (stn.py), the data (distort.py) and the pictures: numpy only.

Coordinates are MXNet's normalised ones: -1 and +1 are the centres of the corner pixels
(x = -1 + 2j/(W-1) for pixel column j, y likewise with rows), x (width) first.
"""
import numpy as np


def target_points(target_shape):
    """(P, 2) normalised (x, y) of the P = H' * W' output pixel centres, row-major."""
    h, w = target_shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing='ij')
    return np.stack([x.ravel(), y.ravel()], 1)


def tps_shape(tps_grid):
    """(rows, cols) of the TPS control grid from an int n (n x n) or a pair; each >= 2."""
    rows, cols = (tps_grid, tps_grid) if np.isscalar(tps_grid) else tuple(tps_grid)
    if int(rows) != rows or int(cols) != cols or rows < 2 or cols < 2:
        raise ValueError(f'tps_grid must be an int >= 2 or a pair of them, not {tps_grid!r}')
    return int(rows), int(cols)


def control_points(tps_grid=4):
    """(K, 2) control points (x, y) of a rows x cols regular grid over [-1, 1]^2, row by
    row from the top left (y = -1): point k = i * cols + j is (x_j, y_i)."""
    rows, cols = tps_shape(tps_grid)
    x, y = np.meshgrid(np.linspace(-1, 1, cols), np.linspace(-1, 1, rows))
    return np.stack([x.ravel(), y.ravel()], 1)


def tps_kernel(r2):
    """The TPS radial basis U(r) = r^2 log r^2 (0 at r = 0), of squared distances r2."""
    return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-12)), 0.0)


def tps_basis(control, points):
    """(P, K) matrix M = B L^-1[:, :K] such that M @ S is the thin-plate spline through the
    K ``control`` points (K, 2) with values S (K, ...) there, at ``points`` (P, 2).

    L = [[U(C, C), 1, C], [1^T; C^T, 0]] is the (K+3)^2 TPS system of the control points
    C, B = [U(points, C), 1, points] (paper section 3.2 and its appendix)."""
    k = len(control)
    r2 = ((control[:, None] - control[None]) ** 2).sum(-1)
    ones = np.ones((k, 1))
    system = np.block([[tps_kernel(r2), ones, control],
                       [np.concatenate([ones, control], 1).T, np.zeros((3, 3))]])
    r2p = ((points[:, None] - control[None]) ** 2).sum(-1)
    at_points = np.concatenate([tps_kernel(r2p), np.ones((len(points), 1)), points], 1)
    return at_points @ np.linalg.inv(system)[:, :k]


def side_points(n, segments=None):
    """Indices 0 .. n-1 of the points along a side of n grid points; with ``segments``,
    about that many evenly spaced ones (both ends always kept)."""
    if segments is None or segments >= n - 1:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, segments + 1)).astype(int))


def outline(grid, height, width, per_side=None):
    """Where a transformer samples from: (N, M, 2) input pixel coordinates (x, y) of the
    border points of the sampling grid, in order around it.

    ``grid`` (N, 2, H', W') holds the normalised input point (x, y) that each output pixel
    reads; the input has height x width pixels, so x maps to column (x + 1)(width - 1)/2
    and y to row (y + 1)(height - 1)/2. The points run along the top row left to right,
    down the right column, along the bottom row right to left and up the left column,
    each corner once: M = 2 (H' + W') - 4. ``per_side`` thins each side of n points to
    min(n, per_side + 1) evenly spaced ones, corners kept (M = 4 per_side when H' and W'
    exceed per_side). This is the output border mapped into the input: a straight-sided
    quadrilateral for affine, attention and projective grids, a curve for TPS. The
    identity grid gives the image border through the corner pixel centres, (0, 0) to
    (width - 1, height - 1).
    """
    grid = np.asarray(grid, np.float64)
    rows, cols = side_points(grid.shape[2], per_side), side_points(grid.shape[3], per_side)
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    i = np.concatenate([np.full(len(cols), top), rows[1:], np.full(len(cols) - 1, bottom),
                        rows[-2:0:-1]])
    j = np.concatenate([cols, np.full(len(rows) - 1, right), cols[-2::-1],
                        np.full(len(rows) - 2, left)])
    points = grid[:, :, i, j].transpose(0, 2, 1)                             # (N, M, 2)
    return (points + 1) / 2 * np.array([width - 1, height - 1])


def outlines_of(grid, height, width, per_side=None):
    """``outline`` of each of K transformers' grids side by side in ``grid`` (N, 2K, H', W'):
    (N, M, 2) for one transformer, (K, N, M, 2) for several."""
    lines = [outline(grid[:, k:k + 2], height, width, per_side) for k in range(0, grid.shape[1], 2)]
    return lines[0] if len(lines) == 1 else np.stack(lines)


def share_on_input(grid):
    """(K,) the share of each of K transformers' sampling points that fall on the input
    (|x| <= 1 and |y| <= 1), from their grids side by side in ``grid`` (N, 2K, H', W'). A
    transformer whose points all lie off the input outputs zeros (the sampler pads with
    zeros) and gets no gradient back from them."""
    grid = np.asarray(grid)
    x, y = grid[:, 0::2], grid[:, 1::2]                                  # (N, K, H', W')
    return ((np.abs(x) <= 1) & (np.abs(y) <= 1)).mean(axis=(0, 2, 3))
