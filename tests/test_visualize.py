"""visualize.py: compare.jpg with the outlines of the sampled regions (every transformer
family), stn.sampling_grid, curves.png and the training animation."""
import argparse
import json
import os

import matplotlib.colors
import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from stngluon import rundir
import stn
from stngluon import symbolic
import train
import visualize
from stngluon import pictures
from stngluon.geometry import outline, outlines_of, share_on_input
import net as net_module
from net import Net
from stn import IDENTITY
from test_mnist import REAL_DIR, needs_mnist

FAMILIES = list(stn.TRANSFORMS)


def digits(n=16, size=28, seed=0):
    """n random sparse 'digits' (n, 1, size, size) in [0, 1] on a black background."""
    rng = np.random.RandomState(seed)
    return (rng.rand(n, 1, size, size) * (rng.rand(n, 1, size, size) > 0.8)).astype(np.float32)


def fresh_net(size=28, transform='affine', tps_grid=4):
    """An initialised STN + LeNet; its transformer is the identity until trained."""
    mx.random.seed(0)
    net = Net(transform=transform, tps_grid=tps_grid)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((2, 1, size, size)))
    return net


def moved(theta, seed=1):
    """``theta`` (T,) of some family nudged away from the identity: a non-identity transformation
    (the projective h31, h32 less, to stay far from the horizon)."""
    step = np.random.RandomState(seed).uniform(-0.2, 0.2, len(theta)).astype(np.float32)
    if len(theta) == 8:
        step[6:] *= 0.2
    return theta + step


def write_config(folder, size, epochs, **config):
    dataset = {28: 'mnist', 42: 'rts', 60: 'tc'}[size]
    config = dict(dataset=dataset, data_seed=0, epochs=epochs, image_shape=[1, size, size],
                  **config)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(config, f)


def exported_run(folder, size=28, epochs=3, transform='affine', bias=None, tps_grid=4):
    """A run folder with config.json and a freshly initialised network exported as train.py
    does; ``bias``: the transformer's regressor bias (theta), instead of the identity."""
    mx.random.seed(0)
    net = Net(transform=transform, tps_grid=tps_grid)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 1, size, size)))
    if bias is not None:
        net.stn.regressor.bias.set_data(mx.nd.array(bias))
    net.export(os.path.join(folder, 'model'), epoch=epochs)
    write_config(folder, size, epochs, transform=transform, tps_grid=tps_grid)
    return str(folder)


def parallel_run(folder, biases, size=42, per_channel=False):
    """A run folder holding an exported 2xST-FCN (MNIST addition) whose two transformers
    have the regressor ``biases`` (affine thetas); ``per_channel``: one per channel."""
    mx.random.seed(0)
    two = Net(model='fcn', transform='affine', transformers=2, num_classes=19,
              pool_after_stn=True, per_channel=per_channel)
    two.initialize(mx.init.Xavier())
    two.hybridize()
    two(mx.nd.zeros((2, 2, size, size)))
    for transformer, bias in zip(two.stn.transformers, biases):
        transformer.regressor.bias.set_data(mx.nd.array(bias))
    two.export(os.path.join(folder, 'model'), epoch=1)
    write_config(folder, size, 1, transform='affine', tps_grid=4, per_channel=per_channel)
    return str(folder)


def symbolic_run(folder, theta, size=28, epochs=3):
    """A run folder as ``train.py --api symbol`` leaves it: the symbolic LeNet (no grid node;
    sym.SpatialTransformer makes the grid inside) with random weights and regressor bias
    ``theta``, saved as ModuleModel.export does, and a config.json without 'transform'."""
    logits = symbolic.get_symbol(target_shape=(size, size), softmax=False)
    shapes = dict(zip(logits.list_arguments(), logits.infer_shape(data=(1, 1, size, size))[0]))
    rng = np.random.RandomState(0)
    params = {f'arg:{name}': mx.nd.array(rng.normal(0, 0.1, shape))
              for name, shape in shapes.items() if name != 'data'}
    params['arg:net_stn_regressor_weight'] = mx.nd.zeros(shapes['net_stn_regressor_weight'])
    params['arg:net_stn_regressor_bias'] = mx.nd.array(theta)
    logits.save(os.path.join(folder, 'model-symbol.json'))
    mx.nd.save(os.path.join(folder, f'model-{epochs:04d}.params'), params)
    write_config(folder, size, epochs, api='symbol')
    return str(folder)


def write_metrics(folder, test_acc):
    os.makedirs(folder, exist_ok=True)
    lines = ['dataset,epoch,train_loss,test_loss,test_acc,lr,imgs_per_s,epoch_s']
    lines += [f'rts,{e},{1 / e:.4f},{0.5 / e:.4f},{acc},0.001,1000,50.0'
              for e, acc in enumerate(test_acc, 1)]
    with open(os.path.join(folder, 'metrics.csv'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return str(folder)


# ---- the sampling grid and its outline ----------------------------------------------------

def border(height, width):
    """The border pixels (x, y) of a height x width image, clockwise from the top left."""
    top = [(j, 0) for j in range(width)]
    right = [(width - 1, i) for i in range(1, height)]
    bottom = [(j, height - 1) for j in range(width - 2, -1, -1)]
    left = [(0, i) for i in range(height - 2, 0, -1)]
    return np.array(top + right + bottom + left, float)


@pytest.mark.parametrize('family', FAMILIES)
def test_the_identity_theta_of_every_family_gives_the_regular_grid(family):
    grid = stn.sampling_grid(stn.identity_theta(family, 3)[None], family, (5, 7), tps_grid=3)
    assert grid.shape == (1, 2, 5, 7) and grid.dtype == np.float32
    y, x = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 7), indexing='ij')
    np.testing.assert_allclose(grid[0], [x, y], atol=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_sampling_grid_is_the_grid_inside_the_exported_block(tmp_path, family):
    theta = moved(stn.identity_theta(family, 3))
    run = exported_run(tmp_path, transform=family, bias=theta, tps_grid=3)
    symbol = mx.sym.load(os.path.join(run, 'model-symbol.json')).get_internals()
    grid = [symbol[name] for name in rundir.GRIDS if name in symbol.list_outputs()][0]
    block = mx.gluon.SymbolBlock(grid, mx.sym.var('data'))
    block.collect_params().load(os.path.join(run, 'model-0003.params'), ignore_extra=True)
    inside = block(mx.nd.array(digits(2))).asnumpy()
    mine = stn.sampling_grid(np.tile(theta, (2, 1)), family, (28, 28), tps_grid=3)
    assert not np.allclose(mine, stn.sampling_grid(
        np.tile(stn.identity_theta(family, 3), (2, 1)), family, (28, 28), tps_grid=3), atol=1e-2)
    np.testing.assert_allclose(mine, inside, atol=1e-5)


def test_the_outline_of_the_identity_is_the_image_border_through_the_corner_pixel_centres():
    grid = stn.sampling_grid(IDENTITY[None], 'affine', (20, 30))
    lines = outline(grid, 20, 30)
    assert lines.shape == (1, 2 * (20 + 30) - 4, 2)
    np.testing.assert_allclose(lines[0], border(20, 30), atol=1e-4)
    np.testing.assert_allclose(lines[0, [0, 29, 48, 77]], [[0, 0], [29, 0], [29, 19], [0, 19]],
                               atol=1e-4)


def test_the_outline_of_a_half_scale_crop_is_the_centre_half_of_the_image():
    grid = stn.sampling_grid([[0.5, 0, 0, 0, 0.5, 0]], 'affine', (29, 29))
    lines = outline(grid, 29, 29)
    np.testing.assert_allclose(lines[0, [0, 28, 56, 84]], [[7, 7], [21, 7], [21, 21], [7, 21]],
                               atol=1e-4)
    np.testing.assert_allclose(lines[0], 7 + border(29, 29) / 2, atol=1e-4)


def test_the_outline_maps_the_grid_into_the_input_in_pixels_not_the_outputs():
    grid = stn.sampling_grid(IDENTITY[None], 'affine', (5, 9))   # a 5x9 output of a 41x21 input
    corners = outline(grid, 41, 21)[0, [0, 8, 12, 20]]
    np.testing.assert_allclose(corners, [[0, 0], [20, 0], [20, 40], [0, 40]], atol=1e-4)


def test_the_share_of_sampling_points_on_the_input_is_counted_per_transformer():
    grids = [stn.sampling_grid([theta], 'affine', (5, 5)) for theta in
             ([1, 0, 0, 0, 1, 0],        # the identity: every point on the input
              [2, 0, 0, 0, 2, 0],        # zoomed out: x = -2, -1, 0, 1, 2, three of five on it
              [1, 0, 5, 0, 1, 0])]       # moved 2.5 widths right: none
    np.testing.assert_allclose(share_on_input(np.concatenate(grids, axis=1)), [1, 0.36, 0])


def test_outlines_thinned_to_a_few_points_per_side_keep_the_corners_in_order():
    grid = stn.sampling_grid(IDENTITY[None], 'affine', (42, 42))
    lines = outline(grid, 42, 42, per_side=16)
    assert lines.shape == (1, 64, 2)
    np.testing.assert_allclose(lines[0, [0, 16, 32, 48]], [[0, 0], [41, 0], [41, 41], [0, 41]],
                               atol=1e-4)
    steps = np.diff(np.vstack([lines[0], lines[0, :1]]), axis=0)
    assert (np.abs(steps).max(1) <= 3 + 1e-4).all() and (np.abs(steps).min(1) < 1e-4).all()


def sides(lines, height, width):
    """The four sides (top, right, bottom, left) of a full outline (M, 2) of a height x width
    grid, each with both its corners."""
    corners = [0, width - 1, width + height - 2, 2 * width + height - 3, len(lines)]
    closed = np.vstack([lines, lines[:1]])
    return [closed[a:b + 1] for a, b in zip(corners, corners[1:])]


def off_line(points):
    """The largest distance of ``points`` (P, 2) from the straight line through the first
    and the last."""
    a, b = points[0], points[-1]
    d = (b - a) / np.linalg.norm(b - a)
    return np.abs((points - a) @ [-d[1], d[0]]).max()


@pytest.mark.parametrize('family', ['affine', 'attention', 'projective'])
def test_the_outlines_of_affine_attention_and_projective_grids_have_straight_sides(family):
    grid = stn.sampling_grid(moved(stn.identity_theta(family))[None], family, (12, 16))
    lines = outline(grid, 28, 28)[0]
    assert max(off_line(side) for side in sides(lines, 12, 16)) < 1e-3
    assert np.abs(lines - outline(stn.sampling_grid(
        stn.identity_theta(family)[None], family, (12, 16)), 28, 28)[0]).max() > 0.5


def test_a_tps_with_displaced_control_points_has_a_curved_outline():
    theta = stn.identity_theta('tps', 4)
    theta[16 + 1] += 0.3   # the y of control point 1 (top row, second column) moves down
    theta[5] += 0.3        # and the x of an inner one (row 1, column 1) right
    grid = stn.sampling_grid(theta[None], 'tps', (12, 16), tps_grid=4)
    lines = outline(grid, 28, 28)[0]
    top = sides(lines, 12, 16)[0]
    assert off_line(top) > 2 and top[:, 1].max() > 3   # the top bends down by 0.3 * 13.5 pixels
    identity = stn.sampling_grid(stn.identity_theta('tps', 4)[None], 'tps', (12, 16), tps_grid=4)
    straight = outline(identity, 28, 28)[0]
    assert max(off_line(side) for side in sides(straight, 12, 16)) < 1e-3


# ---- compare.jpg ----------------------------------------------------------------------

def test_make_grid_tiles_images_row_by_row_between_padding():
    images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1) + 1
    grid = pictures.make_grid(images, nrow=2, pad=1, pad_value=0)
    np.testing.assert_array_equal(grid, [[0, 0, 0, 0, 0],
                                         [0, 1, 0, 2, 0],
                                         [0, 0, 0, 0, 0],
                                         [0, 3, 0, 0, 0],
                                         [0, 0, 0, 0, 0]])


def identity_outlines(n, size=28):
    return outline(stn.sampling_grid(np.tile(IDENTITY, (n, 1)), 'affine',
                                               (size, size)), size, size)


@pytest.mark.parametrize('family', FAMILIES)
def test_with_an_identity_transformer_the_two_panels_are_identical_and_the_outlines_are_the_tile_borders(
        family):
    net, images = fresh_net(transform=family), digits(16)
    transformed, theta = net.stn(mx.nd.array(images))
    grid = stn.sampling_grid(theta.asnumpy(), family, (28, 28))
    fig = pictures.compare_figure(images, transformed.asnumpy(), outline(grid, 28, 28))
    left, right = fig.axes
    np.testing.assert_allclose(right.images[0].get_array(), left.images[0].get_array(), atol=1e-5)
    drawn = np.array([patch.get_xy()[:-1] for patch in left.patches])   # closed: first repeats
    origins = pictures.tile_origins(16, 28, 28)[:, None]
    np.testing.assert_allclose(drawn, origins + border(28, 28), atol=1e-4)


def test_each_outline_is_clipped_to_its_own_tile_and_the_identity_border_stays_inside_it():
    images = digits(2)
    lines = identity_outlines(2)
    lines[0] = (lines[0] - 13.5) * 3 + 13.5   # three times the image: reaches into the next tile
    fig = pictures.compare_figure(images, images, lines, nrow=2)
    left = fig.axes[0]
    for patch, (x, y) in zip(left.patches, pictures.tile_origins(2, 28, 28, nrow=2)):
        box = patch.get_clip_box().get_points()
        tile = left.transData.transform([[x - 0.5, y - 0.5], [x + 27.5, y + 27.5]])
        np.testing.assert_allclose(box, [tile.min(0), tile.max(0)], atol=1e-6)
        assert patch.get_clip_on()
    # Rendered: the identity border of tile 2 is drawn, the big outline of tile 1 is not in it.
    picture = visualize.render(fig).astype(float)
    x, y = pictures.tile_origins(2, 28, 28, nrow=2)[1]
    (x0, y0), (x1, y1) = left.transData.transform([[x - 0.5, y - 0.5], [x + 27.5, y + 27.5]])
    height = picture.shape[0]
    rows = slice(int(round(height - max(y0, y1))), int(round(height - min(y0, y1))))
    tile2 = picture[rows, int(round(min(x0, x1))):int(round(max(x0, x1)))]
    orange = np.array(matplotlib.colors.to_rgb(pictures.BOX_COLORS[0])) * 255
    near = np.abs(tile2 - orange).max(-1) < 60
    edge = int(np.ceil(tile2.shape[1] / 28))   # the border runs half a pixel inside the tile
    assert near[:, :edge].any() and near[:, -edge:].any() and near[:edge].any() \
        and near[-edge:].any()
    assert near[:, :edge].any(1).mean() > 0.9 and near[:edge].any(0).mean() > 0.9   # all along
    assert not near[2 * edge:-2 * edge, 2 * edge:-2 * edge].any()   # tile 1's 3x outline stays out


def test_the_panels_show_pixels_as_they_are_on_a_black_background():
    images = digits(4)
    fig = pictures.compare_figure(images, images, identity_outlines(4))
    shown = fig.axes[0].images[0]
    assert shown.get_clim() == (0, 1)
    np.testing.assert_array_equal(shown.get_array()[2:30, 2:30], images[0, 0])


def test_wrong_predictions_are_labelled_in_red():
    images = digits(3)
    fig = pictures.compare_figure(images, images, identity_outlines(3),
                                   predicted=np.array([1, 2, 3]), labels=np.array([1, 5, 3]))
    texts = fig.axes[1].texts
    assert [t.get_text() for t in texts] == ['1', '2', '3']
    assert [t.get_color() == 'red' for t in texts] == [False, True, False]


def test_compare_run_writes_a_1000_by_540_jpeg_from_the_export(tmp_path):
    path = pictures.compare_run(exported_run(tmp_path), digits(64), labels=np.zeros(64, int))
    assert path == str(tmp_path / 'compare.jpg')
    assert Image.open(path).size == (1000, 540)


# ---- the exported model ---------------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
def test_the_exported_symbol_alone_gives_the_transformers_output_grid_and_logits(tmp_path, family):
    run = exported_run(tmp_path, size=42, transform=family)
    os.remove(os.path.join(run, 'config.json'))        # the two exported files suffice
    model = pictures.load_model(run, (1, 42, 42))
    assert isinstance(model, mx.gluon.SymbolBlock)
    images = digits(5, size=42)
    transformed, grid, logits = model(mx.nd.array(images))
    np.testing.assert_allclose(transformed.asnumpy(), images, atol=1e-5)
    identity = stn.sampling_grid(np.tile(stn.identity_theta(family), (5, 1)), family, (42, 42))
    np.testing.assert_allclose(grid.asnumpy(), identity, atol=1e-5)
    assert logits.shape == (5, 10)


@pytest.mark.parametrize('family', FAMILIES)
def test_the_exported_grid_of_a_moved_transformer_is_the_one_it_samples(tmp_path, family):
    theta = moved(stn.identity_theta(family))
    model = pictures.load_model(exported_run(tmp_path, transform=family, bias=theta))
    x = mx.nd.array(digits(3))
    transformed, grid, _ = model(x)
    np.testing.assert_allclose(grid.asnumpy(), stn.sampling_grid(np.tile(theta, (3, 1)), family,
                                                                 (28, 28)), atol=1e-5)
    np.testing.assert_allclose(mx.nd.BilinearSampler(x, grid).asnumpy(), transformed.asnumpy(),
                               atol=1e-5)


def test_a_symbolic_api_export_without_a_grid_node_gets_the_affine_grid_of_its_theta(tmp_path):
    theta = np.array([0.8, 0.1, 0.2, -0.1, 0.9, -0.1], np.float32)
    run = symbolic_run(tmp_path, theta)
    names = mx.sym.load(os.path.join(run, 'model-symbol.json')).get_internals().list_outputs()
    assert not set(rundir.GRIDS) & set(names)
    x = mx.nd.array(digits(3))
    transformed, grid, logits = pictures.load_model(run, (1, 28, 28))(x)
    np.testing.assert_allclose(grid.asnumpy(), stn.sampling_grid(np.tile(theta, (3, 1)), 'affine',
                                                                 (28, 28)), atol=1e-6)
    np.testing.assert_allclose(mx.nd.BilinearSampler(x, grid).asnumpy(), transformed.asnumpy(),
                               atol=1e-5)
    assert logits.shape == (3, 10)
    pictures.compare_run(run, digits(64))
    assert Image.open(os.path.join(run, 'compare.jpg')).size == (1000, 540)


def test_missing_model_files_exit_with_a_message_naming_the_file(tmp_path):
    with pytest.raises(SystemExit, match='model-symbol.json not found.*finished run'):
        visualize.main(['--out', str(tmp_path)])


@pytest.mark.parametrize('family', ['affine', 'tps'])
def test_a_model_trained_on_other_image_sizes_exits_with_a_message_naming_both_shapes(tmp_path,
                                                                                     family):
    run = exported_run(tmp_path, size=28, transform=family)
    with pytest.raises(SystemExit, match=r'model-0003.params was trained on 28x28 images and does '
                                         r'not take 1x42x42 inputs. Pick the --dataset'):
        visualize.main(['--out', run, '--dataset', 'rts'])


def test_a_model_without_a_transformer_exits_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match='has no spatial transformer.*--no-stn'):
        visualize.main(['--out', exported_run(tmp_path, transform='none')])


@needs_mnist
def test_the_command_line_writes_compare_jpg_from_the_run_folder(tmp_path, capsys):
    run = exported_run(tmp_path)
    visualize.main(['--out', run, '--data-dir', REAL_DIR])
    assert Image.open(os.path.join(run, 'compare.jpg')).size == (1000, 540)
    assert 'wrote' in capsys.readouterr().out


# ---- curves.png -----------------------------------------------------------------------

def test_curves_overlay_several_runs_in_one_png_with_a_legend_line_per_run(tmp_path):
    stn = write_metrics(tmp_path / 'rts-stn', [0.90, 0.95, 0.99])
    lenet = write_metrics(tmp_path / 'rts-lenet', [0.85, 0.90, 0.92])
    fig = visualize.curves_figure([stn, lenet])
    loss, error = fig.axes
    assert len(loss.lines) == 4 and len(error.lines) == 2
    np.testing.assert_allclose(error.lines[0].get_ydata(), [10, 5, 1], atol=1e-9)
    runs = [text.get_text() for text in fig.legends[0].get_texts()]
    assert runs[0].startswith('rts-stn (') and runs[0].endswith('1.00%')
    assert runs[1].startswith('rts-lenet (') and runs[1].endswith('8.00%')
    assert [text.get_text() for text in loss.get_legend().get_texts()] == ['train', 'test']
    visualize.main(['--curves', stn, lenet, '--out', str(tmp_path)])
    assert Image.open(tmp_path / 'curves.png').size == (1000, 440)   # 400 + 20 a run


def test_curves_of_a_folder_without_metrics_exit_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match='metrics.csv not found'):
        visualize.main(['--curves', str(tmp_path), '--out', str(tmp_path)])


# ---- snapshots and the animation ------------------------------------------------------

def snapshot(net, images, out_dir, epoch, transform='affine', tps_grid=4):
    transformed, theta = net.stn(mx.nd.array(images))
    grid = stn.sampling_grid(theta.asnumpy(), transform, images.shape[2:], tps_grid)
    rundir.record_snapshot(out_dir, epoch, images, transformed.asnumpy(), grid)


def test_snapshots_keep_earlier_epochs_and_a_resumed_epoch_replaces_later_ones(tmp_path):
    net, images = fresh_net(), digits(16)
    for epoch in (0, 1, 2, 3):
        snapshot(net, images, str(tmp_path), epoch)
    snapshot(net, images, str(tmp_path), 2)     # resumed after epoch 1
    inputs, frames, outlines, epochs = rundir.read_snapshots(str(tmp_path))
    assert epochs.tolist() == [0, 1, 2]
    assert inputs.dtype == frames.dtype == np.uint8
    assert frames.shape == (3, 16, 1, 28, 28) and outlines.shape == (3, 16, 64, 2)
    np.testing.assert_array_equal(frames[0], rundir.to_uint8(images))   # identity at start
    np.testing.assert_allclose(outlines[0, :, [0, 16, 32, 48]],
                               np.tile([[0, 0], [27, 0], [27, 27], [0, 27]], (16, 1, 1))
                               .transpose(1, 0, 2), atol=1e-4)             # the image borders
    assert os.listdir(tmp_path) == ['snapshots.npz']                     # no temp files left


def test_animate_writes_a_gif_with_one_frame_per_epoch(tmp_path):
    net, images = fresh_net(42), digits(16, size=42)
    for epoch in range(3):
        snapshot(net, images, str(tmp_path), epoch)
    visualize.main(['--out', str(tmp_path), '--animate'])
    gif = Image.open(tmp_path / 'stn_training.gif')
    assert (gif.size, gif.n_frames) == ((640, 340), 3)
    assert os.path.getsize(tmp_path / 'stn_training.gif') < 500_000


def test_train_snapshots_a_tps_net_and_animate_draws_its_curved_outlines(tmp_path):
    net, images = fresh_net(42, transform='tps', tps_grid=3), digits(16, size=42)

    holder = argparse.Namespace(stn=net)   # a net with a transformer on the input

    class Model:   # what train.snapshot needs of train.GluonModel
        config = argparse.Namespace(transform='tps', tps_grid=3, transformers=1)
        net = holder

        def regions(self, x):
            out, theta = self.net.stn.stn(mx.nd.array(x))
            return out.asnumpy(), stn.sampling_grid(theta.asnumpy(), 'tps', (42, 42), 3)

    model = Model()
    train.snapshot(model, images, str(tmp_path), 0)
    theta = moved(stn.identity_theta('tps', 3))
    net.stn.regressor.bias.set_data(mx.nd.array(theta))
    train.snapshot(model, images, str(tmp_path), 1)
    inputs, frames, outlines, epochs = rundir.read_snapshots(str(tmp_path))
    assert frames.shape == (2, 16, 1, 42, 42) and outlines.shape == (2, 16, 64, 2)
    np.testing.assert_allclose(outlines[0, 0, [0, 16, 32, 48]],
                               [[0, 0], [41, 0], [41, 41], [0, 41]], atol=1e-4)
    grid = stn.sampling_grid(theta[None], 'tps', (42, 42), tps_grid=3)
    np.testing.assert_allclose(outlines[1, 0], outline(grid, 42, 42, per_side=16)[0],
                               atol=1e-4)
    assert max(off_line(side) for side in np.split(np.vstack([outlines[1, 0], outlines[1, 0, :1]]),
                                                   [17, 33, 49])) > 0.5   # curved
    visualize.main(['--out', str(tmp_path), '--animate'])
    assert Image.open(tmp_path / 'stn_training.gif').n_frames == 2


def test_animate_without_snapshots_exits_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match='snapshots.npz not found'):
        visualize.main(['--out', str(tmp_path), '--animate'])


@pytest.mark.parametrize('damage, message', [
    (lambda run: open(os.path.join(run, 'model-0003.params'), 'r+b').truncate(300),
     'model-0003.params is corrupt or not an MXNet parameter file'),
    (lambda run: open(os.path.join(run, 'model-symbol.json'), 'w').write('{"nodes": []}'),
     'model-symbol.json is not an exported network'),
    (lambda run: open(os.path.join(run, 'model-symbol.json'), 'w').write('{"nodes": '),
     'model-symbol.json is not valid JSON'),
], ids=['truncated-params', 'no-network', 'bad-json'])
def test_a_damaged_export_exits_with_a_message_naming_the_file(tmp_path, damage, message):
    run = exported_run(tmp_path)
    damage(run)
    with pytest.raises(SystemExit, match=message):
        visualize.main(['--out', run])


def test_a_truncated_snapshot_file_exits_with_a_message(tmp_path):
    net, images = fresh_net(), digits(16)
    snapshot(net, images, str(tmp_path), 0)
    path = tmp_path / 'snapshots.npz'
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(SystemExit, match='snapshots.npz is unreadable'):
        visualize.main(['--out', str(tmp_path), '--animate'])


def test_a_malformed_metrics_row_exits_with_a_message(tmp_path):
    run = write_metrics(tmp_path / 'run', [0.9, 0.95])
    text = open(os.path.join(run, 'metrics.csv')).read().replace('0.95', 'nan')
    open(os.path.join(run, 'metrics.csv'), 'w').write(text)
    with pytest.raises(SystemExit, match='metrics.csv, line 3: malformed row'):
        visualize.main(['--curves', run, '--out', str(tmp_path)])


# ---- parallel transformers (MNIST addition) -------------------------------------------------

def test_the_pictures_of_parallel_transformers_show_each_ones_region_and_output(tmp_path):
    left = [0.5, 0, -0.5, 0, 0.5, 0]     # transformer 1 zooms on the left half
    right = [0.5, 0, 0.5, 0, 0.5, 0]     # transformer 2 on the right half
    run = parallel_run(tmp_path, [left, right])
    model = pictures.load_model(run, (2, 42, 42))
    x = np.zeros((3, 2, 42, 42), np.float32)
    x[:, 0, 15:25, 2:18] = 1                        # digit 1 (red) on the left,
    x[:, 1, 15:25, 24:40] = 1                       # digit 2 (green) on the right
    transformed, grid, logits = (a.asnumpy() for a in model(mx.nd.array(x)))
    assert transformed.shape == (3, 4, 42, 42) and grid.shape == (3, 4, 42, 42)
    assert logits.shape == (3, 19)
    # each transformer's output holds its own half: digit 1 fills transformer 1's view
    assert transformed[:, 0].mean() > 0.3 and transformed[:, 1].mean() < 0.01
    assert transformed[:, 3].mean() > 0.3 and transformed[:, 2].mean() < 0.01
    lines = outlines_of(grid, 42, 42)
    assert lines.shape[:2] == (2, 3)
    assert lines[0][..., 0].max() <= 20.5 <= lines[1][..., 0].min()   # left and right halves
    fig = pictures.compare_figure(x, transformed, lines)
    assert len(fig.axes) == 3                                      # inputs + one per transformer
    colors = {matplotlib.colors.to_hex(p.get_edgecolor()) for p in fig.axes[0].patches}
    assert colors == {pictures.BOX_COLORS[0], pictures.BOX_COLORS[1]}
    assert fig.axes[0].images[0].get_array().shape[-1] == 3        # two channels as colours
    path = pictures.compare_run(run, x)
    assert Image.open(path).size == (1500, 540)


def test_the_pictures_of_one_transformer_per_channel_show_each_its_own_digit_in_its_colour(tmp_path):
    left = [0.5, 0, -0.5, 0, 0.5, 0]     # transformer 1 zooms on the left half, digit 1
    right = [0.5, 0, 0.5, 0, 0.5, 0]     # transformer 2 on the right half, digit 2
    run = parallel_run(tmp_path, [left, right], per_channel=True)
    x = np.zeros((3, 2, 42, 42), np.float32)
    x[:, 0, 15:25, 2:18] = 1
    x[:, 1, 15:25, 24:40] = 1
    path = pictures.compare_run(run, x)
    assert Image.open(path).size == (1500, 540)
    model = pictures.load_model(run, (2, 42, 42))
    transformed, grid, _ = (a.asnumpy() for a in model(mx.nd.array(x)))
    own = transformed[:, [0, 3]]                    # what the classifier gets: (N, 2, H, W)
    fig = pictures.compare_figure(x, own, outlines_of(grid, 42, 42))
    first, second = (ax.images[0].get_array() for ax in fig.axes[1:])
    ink = lambda panel, channel: (panel[..., channel] > 0.9).any()    # noqa: E731 (pads: 0.5)
    assert ink(first, 0) and not ink(first, 1)       # red: digit 1 alone
    assert ink(second, 1) and not ink(second, 0)     # green: digit 2 alone


# ---- a transformer on a feature map -------------------------------------------------------

@pytest.mark.parametrize('pooled, side, first, last', [
    (False, 28, 4.5, 4.5 + 2 * 9),               # 28 -> conv 20 -> pool 10: pixels 4.5 ... 22.5
    (True, 42, 9.5, 9.5 + 4 * 5),                # 42 -> 21 -> 13 -> 6: pixels 9.5 ... 29.5
])
def test_a_feature_map_point_maps_to_the_centre_of_its_receptive_field(pooled, side, first, last):
    feature = net_module.feature_side(side, pooled)
    a, b = net_module.feature_to_input(feature, pooled, side)
    to_pixel = lambda n: (n + 1) * (side - 1) / 2   # noqa: E731
    assert to_pixel(a * -1 + b) == pytest.approx(first) and to_pixel(a + b) == pytest.approx(last)


def test_the_pictures_show_where_a_feature_map_transformer_reads_on_the_input(tmp_path):
    mx.random.seed(0)
    deep = Net(model='cnn', transform='affine', width=8, places=('input', 'conv1'),
               pool_after_stn=True)
    deep.initialize(mx.init.Xavier())
    deep.hybridize()
    deep(mx.nd.zeros((2, 1, 42, 42)))
    deep.stn.regressor.bias.set_data(mx.nd.array([0.5, 0, 0.5, 0, 0.5, 0.5]))   # bottom right
    deep.export(str(tmp_path / 'model'), epoch=1)
    write_config(tmp_path, 42, 1, transform='affine')
    model = pictures.load_model(str(tmp_path), (1, 42, 42))
    x = digits(3, size=42)
    transformed, grid, _ = (a.asnumpy() for a in model(mx.nd.array(x)))
    assert transformed.shape == (3, 2, 42, 42) and grid.shape == (3, 4, 42, 42)
    lines = outlines_of(grid, 42, 42)
    # the input transformer reads the bottom-right quarter, pixels 20.5 to 41; the feature
    # transformer (at the identity) reads, inside that, the centres of its receptive fields,
    # transformer pixels 9.5 to 29.5, i.e. input pixels 20.5 + 9.5/2 to 20.5 + 29.5/2
    np.testing.assert_allclose(lines[0][:, 0], [[20.5, 20.5]] * 3, atol=1e-4)
    np.testing.assert_allclose(lines[1][:, 0], [[20.5 + 9.5 / 2] * 2] * 3, atol=1e-3)
    np.testing.assert_allclose(lines[1][:, 82], [[20.5 + 29.5 / 2] * 2] * 3, atol=1e-3)   # corner
    # and its picture is the input sampled there
    np.testing.assert_allclose(transformed[:, 1:], [mx.nd.BilinearSampler(
        mx.nd.array(x), mx.nd.array(grid[:, 2:])).asnumpy()[k] for k in range(3)], atol=1e-5)
    model_run = train_snapshot_of(deep, x)
    np.testing.assert_allclose(model_run[1], grid, atol=1e-4)          # training's pictures agree


def train_snapshot_of(deep, x):
    """engine.GluonModel.regions for the net ``deep``, as train.snapshot records them."""
    from stngluon import engine
    model = engine.GluonModel.__new__(engine.GluonModel)
    model.config = argparse.Namespace(transform='affine', tps_grid=4, transformers=1)
    model.net, model.ctx = deep, mx.cpu()
    return model.regions(x)


@pytest.mark.parametrize('config, label', [
    ({'model': 'cnn', 'transform': 'none', 'dataset': 'rts'}, 'run (CNN, rts)'),
    ({'model': 'fcn', 'transform': 'tps', 'dataset': 'p'}, 'run (ST-FCN (tps), p)'),
    ({'model': 'fcn', 'transform': 'affine', 'transformers': 2, 'per_channel': True,
      'dataset': 'addition'}, 'run (2xST-FCN (affine), one per channel, addition)'),
    ({'model': 'cnn', 'transform': 'projective', 'iterations': 4, 'dataset': 'perturbed'},
     'run (IC-STN-4 (projective) + CNN, perturbed)'),
    ({'transform': 'none'}, 'run (LeNet, mnist)'),
    ({}, 'run (STN (affine) + LeNet, mnist)'),
])
def test_a_curves_legend_names_the_runs_network_as_train_py_does(tmp_path, config, label):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'config.json').write_text(json.dumps(config))
    assert visualize.run_label(str(tmp_path / 'run')) == label
