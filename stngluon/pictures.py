"""compare.jpg: a run's input digits, the regions its transformer samples outlined, beside
its output (visualize.py is the command; train.py writes one at the end of a run).

The picture needs only the exported network (model-symbol.json + model-NNNN.params):
the transformer's output and sampling grid are picked from the symbol's internals by
name (rundir.TRANSFORMED, rundir.GRIDS). Each outline is the border of the output
mapped through the sampling grid: a quadrilateral for the affine, attention and
projective families, a curve for TPS.
"""
import os
import re

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from stngluon import compat  # noqa: E402,F401  (the numpy shim, before mxnet)
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Polygon, Rectangle  # noqa: E402
from mxnet import gluon  # noqa: E402

import net  # noqa: E402
import stn  # noqa: E402
from stngluon import rundir  # noqa: E402
from stngluon.geometry import outlines_of  # noqa: E402
from stngluon.rundir import GRID_CONSTANTS, GRIDS, THETA, TRANSFORMED, RunError  # noqa: E402

BOX_COLORS = ('#ffb000', '#00c8ff', '#ff50ff', '#80ff80')   # one per transformer


# ---- tiles and outlines ---------------------------------------------------------------

def make_grid(images, nrow=8, pad=2, pad_value=0.5):
    """Tile images (N, C, H, W) into one (H', W') grayscale or (H', W', C) array, nrow per row."""
    n, c, h, w = images.shape
    rows = int(np.ceil(n / nrow))
    grid = np.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, images.dtype)
    for k in range(n):
        r, col = divmod(k, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = images[k]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def tile_origins(n, height, width, nrow=8, pad=2):
    """Pixel (x, y) of the top-left pixel of each of n tiles in make_grid's layout: (n, 2)."""
    r, col = np.divmod(np.arange(n), nrow)
    return np.stack([pad + col * (width + pad), pad + r * (height + pad)], 1).astype(float)


def to_unit(images):
    """uint8 or float images as float32 in [0, 1]."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255
    return np.clip(images, 0, 1).astype(np.float32)


# ---- compare.jpg ----------------------------------------------------------------------

def as_shown(images):
    """Images (N, C, H, W) as imshow takes them: one channel as it is, two (MNIST
    addition's digits) as red and green, the overlap yellow."""
    if images.shape[1] != 2:
        return images
    return np.concatenate([images, np.zeros_like(images[:, :1])], 1)


def show_grid(ax, images, title, nrow, color='black'):
    ax.imshow(make_grid(as_shown(to_unit(images)), nrow), cmap='gray', vmin=0, vmax=1,
              interpolation='nearest')
    ax.set_title(title, fontsize=11, color=color)
    ax.axis('off')


def draw_outlines(ax, outlines, height, width, nrow, color=BOX_COLORS[0]):
    """Draw each closed outline (M, 2) of ``outlines`` (N, M, 2) on its tile of
    make_grid's layout in ``ax``, clipped to that tile's pixels; returns the patches."""
    patches = []
    for (x, y), points in zip(tile_origins(len(outlines), height, width, nrow), outlines):
        polygon = Polygon(points + [x, y], closed=True, fill=False, edgecolor=color,
                          linewidth=0.9)
        ax.add_patch(polygon)
        tile = Rectangle((x - 0.5, y - 0.5), width, height, transform=ax.transData)
        polygon.set_clip_path(tile)
        patches.append(polygon)
    return patches


def compare_figure(images, transformed, outlines, predicted=None, labels=None, nrow=8,
                   figsize=None, title=None, headings=None):
    """Inputs (N, C, H, W) with the outlines of their sampled regions beside the outputs
    (N, C, H', W'); with K transformers side by side, outputs (N, K*C, H', W') and
    outlines (K, N, M, 2), one panel and one outline colour per transformer; outputs
    (N, K, H', W') of K transformers one per channel (``net.ParallelTransformers``'
    per_channel) show each transformer's channel in that channel's colour.

    ``outlines`` (N, M, 2): input pixel coordinates (x, y) of each closed outline, as
    ``outline`` gives them; each is drawn on its input's tile and clipped to it.
    ``predicted`` (N,) classes are written on the (last) outputs, in red where they
    differ from ``labels`` (N,). Two-channel images show as red and green. ``headings``:
    the output panels' titles (default 'Transformer k'; a compositional transformer's
    steps are shown the same way, headed 'After step k'). Returns the matplotlib figure
    (10 x 5.4 inches for one transformer, 5 more per extra one).
    """
    n, c, h, w = images.shape
    outlines = np.asarray(outlines)
    outlines = outlines[None] if outlines.ndim == 3 else outlines
    count = len(outlines)
    fig, axes = plt.subplots(1, 1 + count, figsize=figsize or (5 + 5 * count, 5.4))
    show_grid(axes[0], images, 'Dataset Images', nrow)
    for k, lines in enumerate(outlines):
        draw_outlines(axes[0], lines, h, w, nrow, BOX_COLORS[k % len(BOX_COLORS)])
    per = transformed.shape[1] // count          # channels per transformer
    for k, ax in enumerate(axes[1:]):
        heading = 'Transformed Images' if count == 1 else f'Transformer {k + 1}'
        heading = headings[k] if headings else heading
        if predicted is not None and k == count - 1:
            heading += ' (prediction' + ('; red: wrong)' if labels is not None else ')')
            origins = tile_origins(n, *transformed.shape[2:], nrow)
            for i, (x, y) in enumerate(origins):
                wrong = labels is not None and predicted[i] != labels[i]
                ax.text(x + 0.5, y + 0.5, str(int(predicted[i])), va='top', ha='left',
                        fontsize=7, fontweight='bold', color='red' if wrong else '#40ff40')
        part = transformed[:, k * per:(k + 1) * per]
        if per == 1 and c == count > 1:         # one per channel: its own, in its colour
            part = np.concatenate([part if j == k else np.zeros_like(part) for j in range(c)], 1)
        show_grid(ax, part, heading, nrow,
                  'black' if count == 1 else BOX_COLORS[k % len(BOX_COLORS)])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_compare(path, images, transformed, outlines, predicted=None, labels=None, headings=None):
    """compare.jpg (1000 x 540 pixels, 500 wider per extra transformer) from arrays; see
    ``compare_figure``."""
    fig = compare_figure(images, transformed, outlines, predicted, labels, headings=headings)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_samples(images, path, title):
    """A sheet of ``images`` (N, 1, H, W) in [0, 1]."""
    fig, ax = plt.subplots(figsize=(5, 5.3))
    ax.imshow(make_grid(images), cmap='gray', vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the exported model ---------------------------------------------------------------

def load_model(run_dir, image_shape=None, ctx=mx.cpu()):
    """The run's exported network as a block: x (N, C, H, W) -> (transformed (N, C, H', W'),
    grid (N, 2, H', W'), logits (N, classes)), for a transformer of any family; with K
    transformers side by side (net.ParallelTransformers) their outputs and grids are
    concatenated: (N, K*C, H', W') and (N, 2K, H', W'); so are a compositional
    transformer's steps (``rundir.step_outputs``), the last being its output.

    ``grid`` is the sampling grid (stn.py's convention: the normalised input point x, y
    each output pixel reads; see ``outline``), the symbol's own grid node. Built from
    model-symbol.json and model-NNNN.params alone (no Python classes); a symbolic-API
    export (symbolic.py: affine, no grid node) gets its grid rebuilt from theta with
    stn.affine_grid inside the block. ``image_shape`` (C, H, W), if given, is checked
    against the saved weights. Problems raise ``rundir.RunError`` with a message.
    """
    sym, weights, symbol_file, params_file = rundir.load_export(run_dir)   # checked
    internals = sym.get_internals()
    names = internals.list_outputs()
    transformed = rundir.transformer_outputs(names)
    if not transformed and rundir.FEATURE_TRANSFORMED not in names:
        raise RunError(f'{symbol_file} has no spatial transformer (none of {TRANSFORMED} '
                       f'is among its internals): a plain LeNet (--no-stn) run has nothing to '
                       f'show. Pass --out RUN_DIR of an STN run.')
    if image_shape is not None:
        check_input_shape(sym, params_file, weights, tuple(image_shape))
    outputs, grids = [internals[t] for t in transformed], [grid_of(internals, t, run_dir)
                                                           for t in transformed]
    if len(transformed) == 1:   # a compositional transformer: each step's look, then the output
        steps = rundir.step_outputs(names, transformed[0])
        outputs = [internals[sampled] for sampled, _ in steps] + outputs
        grids = [internals[grid] for _, grid in steps] + grids
    if rundir.FEATURE_TRANSFORMED in names:
        region = feature_region_of(internals, grids[:1], image_shape or
                                   rundir.input_shape(sym, weights), run_dir)
        outputs.append(mx.sym.BilinearSampler(mx.sym.var('data'), region))
        grids.append(region)
    if len(outputs) > 1:   # several transformers: their outputs and grids side by side
        outputs, grids = [mx.sym.concat(*outputs, dim=1)], [mx.sym.concat(*grids, dim=1)]
    block = gluon.SymbolBlock(mx.sym.Group([*outputs, *grids, sym]),
                              mx.sym.var('data', dtype='float32'))
    block.collect_params().load(params_file, ctx=ctx)
    return block


def grid_of(internals, transformed, run_dir):
    """The sampling grid among an exported symbol's ``internals`` of the transformer whose
    output node is ``transformed``: its grid node, or for a sym.SpatialTransformer (affine
    only; the grid is made inside the operator) the affine grid of theta on the
    transformer's target_shape."""
    names = internals.list_outputs()
    for name in rundir.grid_names(transformed):
        if name in names:
            return internals[name]
    transform = rundir.read_config(run_dir).get('transform', 'affine')
    target_shape = internals[transformed].attr('target_shape')
    if THETA not in names or target_shape is None or transform != 'affine':
        raise RunError(f'the exported symbol of {run_dir} has no sampling grid (none of '
                       f'{GRIDS}) to rebuild for a {transform} transformer: export the run '
                       f'again with this version of train.py.')
    target_shape = tuple(int(n) for n in re.findall(r'\d+', target_shape))
    return stn.affine_grid(mx.sym, internals[THETA], target_shape)


def feature_region_of(internals, input_grid, image_shape, run_dir):
    """The grid (N, 2, H', W') of input points that the transformer on the CNN's feature
    map reads (``net.feature_region``), from an exported symbol's ``internals``; after the
    ``input_grid`` ([] or [the input transformer's grid]) for inputs of ``image_shape``."""
    feature_grid = grid_of(internals, rundir.FEATURE_TRANSFORMED, run_dir)
    data = (1, *image_shape)
    side = feature_grid.infer_shape(data=data)[1][0][2]
    shape = input_grid[0].infer_shape(data=data)[1][0][2:] if input_grid else image_shape[1:]
    recorded = rundir.read_config(run_dir).get('pool_after_stn')   # config.json's, if there
    pooled = bool(input_grid) and (recorded if isinstance(recorded, bool)   # (only after an
                                   else net.feature_side(shape[0], False) != side)   # input ST)
    a, b = net.feature_to_input(side, pooled, shape[0])
    return net.feature_region(mx.sym, feature_grid, input_grid[0] if input_grid else None,
                              tuple(shape), a, b)


def trained_shape(sym, saved):
    """(H', W') of the transformer's output, which is the training images' H x W: from the
    grid generator's target_shape, or the projective/TPS grid constant among the ``saved``
    shapes by name (of the first transformer); None if neither is there."""
    internals = sym.get_internals()
    for name in internals.list_outputs():
        if name.startswith('net_stn') and name.endswith(('_gridgenerator0_output',
                                                         '_transformer_output')) \
                and internals[name].attr('target_shape'):
            return tuple(int(n) for n in re.findall(r'\d+', internals[name].attr('target_shape')))
    for name in sorted(saved):
        if name.startswith('net_stn') and name.endswith(tuple(c[len('net_stn'):]
                                                              for c in GRID_CONSTANTS)):
            return tuple(saved[name][1:])
    return None


def check_input_shape(sym, params_file, weights, shape):
    """RunError if ``weights`` ({name: NDArray}, from ``params_file``) do not fit inputs of
    ``shape`` (C, H, W)."""
    saved = {name: w.shape for name, w in weights.items()}
    trained = trained_shape(sym, saved)
    try:
        arg_shapes = sym.infer_shape(data=(1,) + shape)[0]
        fits = all(saved.get(name, s) == tuple(s) for name, s in zip(sym.list_arguments(), arg_shapes))
    except mx.MXNetError:
        fits = False
    if not fits:
        trained = 'x'.join(map(str, trained)) + ' images' if trained else 'other images'
        raise RunError(f'{params_file} was trained on {trained} and does not take '
                       f'{"x".join(map(str, shape))} inputs. Pick the --dataset the run was '
                       f'trained on (see its config.json), or leave --dataset out.')


def compare_run(run_dir, images, labels=None, model=None):
    """RUN_DIR/compare.jpg for ``images`` (N, C, H, W), through the run's exported network
    (``model``: that network from ``load_model``, if already loaded)."""
    model = model or load_model(run_dir, images.shape[1:])
    transformed, grid, logits = (a.asnumpy() for a in model(mx.nd.array(images)))
    if rundir.read_config(run_dir).get('per_channel'):    # transformer k passes on channel k
        c = images.shape[1]
        transformed = transformed[:, net.passed_channels(c)]
    path = os.path.join(run_dir, 'compare.jpg')
    steps = rundir.read_config(run_dir).get('iterations', 1)
    headings = [f'After step {k + 1}' + (' (the output)' if k == steps - 1 else '')
                for k in range(steps)] if steps > 1 else None
    write_compare(path, images, transformed, outlines_of(grid, *images.shape[2:]),
                  logits.argmax(axis=1).astype(int), labels, headings)
    return path
