"""visualize.py: compare.jpg, the sampling box, curves.png and the training animation."""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

import visualize
from net import Net
from stn import IDENTITY
from test_mnist import REAL_DIR, needs_mnist


def digits(n=16, size=28, seed=0):
    """n random sparse 'digits' (n, 1, size, size) in [0, 1] on a black background."""
    rng = np.random.RandomState(seed)
    return (rng.rand(n, 1, size, size) * (rng.rand(n, 1, size, size) > 0.8)).astype(np.float32)


def fresh_net(size=28):
    """An initialised STN + LeNet; its transformer is the identity until trained."""
    mx.random.seed(0)
    net = Net()
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((2, 1, size, size)))
    return net


def exported_run(folder, size=28, use_stn=True, epochs=3):
    """A run folder with config.json and a freshly initialised network exported as train.py does."""
    mx.random.seed(0)
    net = Net(use_stn=use_stn)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((2, 1, size, size)))
    net.export(os.path.join(folder, 'model'), epoch=epochs)
    dataset = {28: 'mnist', 42: 'rts', 60: 'tc'}[size]
    config = dict(dataset=dataset, data_seed=0, no_stn=not use_stn, epochs=epochs,
                  image_shape=[1, size, size])
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(config, f)
    return str(folder)


def write_metrics(folder, test_acc):
    os.makedirs(folder, exist_ok=True)
    lines = ['dataset,epoch,train_loss,test_loss,test_acc,lr,imgs_per_s,epoch_s']
    lines += [f'rts,{e},{1 / e:.4f},{0.5 / e:.4f},{acc},0.001,1000,50.0'
              for e, acc in enumerate(test_acc, 1)]
    with open(os.path.join(folder, 'metrics.csv'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return str(folder)


# ---- the sampling box -----------------------------------------------------------------

def test_the_box_of_the_identity_is_the_image_border_through_the_corner_pixel_centres():
    box = visualize.sampling_box(IDENTITY[None], 20, 30)
    assert box.shape == (1, 4, 2)
    np.testing.assert_allclose(box[0], [[0, 0], [29, 0], [29, 19], [0, 19]], atol=1e-6)


def test_the_box_of_a_half_scale_crop_is_the_centre_half_of_the_image():
    box = visualize.sampling_box([[0.5, 0, 0, 0, 0.5, 0]], 29, 29)
    np.testing.assert_allclose(box[0], [[7, 7], [21, 7], [21, 21], [7, 21]], atol=1e-6)


def test_the_box_corners_are_where_mxnets_grid_generator_samples_the_output_corners():
    theta = np.random.RandomState(1).uniform(-1, 1, (5, 6)).astype(np.float32)
    height, width = 17, 23
    grid = mx.nd.GridGenerator(mx.nd.array(theta), transform_type='affine',
                               target_shape=(height, width)).asnumpy()          # (N, 2, H, W)
    corners = grid[:, :, [0, 0, -1, -1], [0, -1, -1, 0]].transpose(0, 2, 1)     # (N, 4, 2)
    pixels = (corners + 1) / 2 * [width - 1, height - 1]
    np.testing.assert_allclose(visualize.sampling_box(theta, height, width), pixels, atol=1e-4)


# ---- compare.jpg ----------------------------------------------------------------------

def test_make_grid_tiles_images_row_by_row_between_padding():
    images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1) + 1
    grid = visualize.make_grid(images, nrow=2, pad=1, pad_value=0)
    np.testing.assert_array_equal(grid, [[0, 0, 0, 0, 0],
                                         [0, 1, 0, 2, 0],
                                         [0, 0, 0, 0, 0],
                                         [0, 3, 0, 0, 0],
                                         [0, 0, 0, 0, 0]])


def test_with_an_identity_transformer_the_two_panels_are_identical_and_the_boxes_are_the_tile_borders():
    net, images = fresh_net(), digits(16)
    transformed, theta = net.stn(mx.nd.array(images))
    fig = visualize.compare_figure(images, transformed.asnumpy(), theta.asnumpy())
    left, right = fig.axes
    np.testing.assert_allclose(right.images[0].get_array(), left.images[0].get_array(), atol=1e-5)
    drawn = np.array([path.vertices[:4] for path in left.collections[0].get_paths()])
    origins = visualize.tile_origins(16, 28, 28)[:, None]
    np.testing.assert_allclose(drawn, origins + [[0, 0], [27, 0], [27, 27], [0, 27]], atol=1e-4)


def test_the_panels_show_pixels_as_they_are_on_a_black_background():
    images = digits(4)
    fig = visualize.compare_figure(images, images, np.tile(IDENTITY, (4, 1)))
    shown = fig.axes[0].images[0]
    assert shown.get_clim() == (0, 1)
    np.testing.assert_array_equal(shown.get_array()[2:30, 2:30], images[0, 0])


def test_wrong_predictions_are_labelled_in_red():
    images = digits(3)
    fig = visualize.compare_figure(images, images, np.tile(IDENTITY, (3, 1)),
                                   predicted=np.array([1, 2, 3]), labels=np.array([1, 5, 3]))
    texts = fig.axes[1].texts
    assert [t.get_text() for t in texts] == ['1', '2', '3']
    assert [t.get_color() == 'red' for t in texts] == [False, True, False]


def test_compare_run_writes_a_1000_by_540_jpeg_from_the_export(tmp_path):
    path = visualize.compare_run(exported_run(tmp_path), digits(64), labels=np.zeros(64, int))
    assert path == str(tmp_path / 'compare.jpg')
    assert Image.open(path).size == (1000, 540)


# ---- the exported model ---------------------------------------------------------------

def test_the_exported_symbol_alone_gives_the_transformers_output_theta_and_logits(tmp_path):
    model = visualize.load_model(exported_run(tmp_path, size=42), (1, 42, 42))
    assert isinstance(model, mx.gluon.SymbolBlock)
    images = digits(5, size=42)
    transformed, theta, logits = model(mx.nd.array(images))
    np.testing.assert_allclose(transformed.asnumpy(), images, atol=1e-5)
    np.testing.assert_allclose(theta.asnumpy(), np.tile(IDENTITY, (5, 1)), atol=1e-6)
    assert logits.shape == (5, 10)


def test_missing_model_files_exit_with_a_message_naming_the_file(tmp_path):
    with pytest.raises(SystemExit, match='model-symbol.json not found.*finished run'):
        visualize.main(['--out', str(tmp_path)])


def test_a_model_trained_on_other_image_sizes_exits_with_a_message_naming_both_shapes(tmp_path):
    run = exported_run(tmp_path, size=28)
    with pytest.raises(SystemExit, match=r'model-0003.params was trained on 28x28 images and does '
                                         r'not take 1x42x42 inputs. Pick the --dataset'):
        visualize.main(['--out', run, '--dataset', 'rts'])


def test_a_model_without_a_transformer_exits_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match='has no spatial transformer.*--no-stn'):
        visualize.main(['--out', exported_run(tmp_path, use_stn=False)])


@needs_mnist
def test_the_command_line_writes_compare_jpg_from_the_run_folder(tmp_path, capsys):
    run = exported_run(tmp_path)
    visualize.main(['--out', run, '--data-dir', REAL_DIR])
    assert Image.open(os.path.join(run, 'compare.jpg')).size == (1000, 540)
    assert 'wrote' in capsys.readouterr().out


# ---- curves.png -----------------------------------------------------------------------

def test_curves_overlay_several_runs_in_one_1000_by_400_png(tmp_path):
    stn = write_metrics(tmp_path / 'rts-stn', [0.90, 0.95, 0.99])
    lenet = write_metrics(tmp_path / 'rts-lenet', [0.85, 0.90, 0.92])
    fig = visualize.curves_figure([stn, lenet])
    loss, error = fig.axes
    assert len(loss.lines) == 4 and len(error.lines) == 2
    np.testing.assert_allclose(error.lines[0].get_ydata(), [10, 5, 1], atol=1e-9)
    assert error.get_legend().get_texts()[1].get_text().endswith('8.00%')
    visualize.main(['--curves', stn, lenet, '--out', str(tmp_path)])
    assert Image.open(tmp_path / 'curves.png').size == (1000, 400)


def test_curves_of_a_folder_without_metrics_exit_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match='metrics.csv not found'):
        visualize.main(['--curves', str(tmp_path), '--out', str(tmp_path)])


# ---- snapshots and the animation ------------------------------------------------------

def snapshot(net, images, out_dir, epoch):
    transformed, theta = net.stn(mx.nd.array(images))
    visualize.record_snapshot(images, transformed.asnumpy(), theta.asnumpy(), out_dir, epoch)


def test_snapshots_keep_earlier_epochs_and_a_resumed_epoch_replaces_later_ones(tmp_path):
    net, images = fresh_net(), digits(16)
    for epoch in (0, 1, 2, 3):
        snapshot(net, images, str(tmp_path), epoch)
    snapshot(net, images, str(tmp_path), 2)     # resumed after epoch 1
    inputs, frames, theta, epochs = visualize.load_snapshots(str(tmp_path))
    assert epochs.tolist() == [0, 1, 2]
    assert inputs.dtype == frames.dtype == np.uint8
    assert frames.shape == (3, 16, 1, 28, 28) and theta.shape == (3, 16, 6)
    np.testing.assert_array_equal(frames[0], visualize.to_uint8(images))   # identity at start
    assert os.listdir(tmp_path) == ['snapshots.npz']                     # no temp files left


def test_animate_writes_a_gif_with_one_frame_per_epoch(tmp_path):
    net, images = fresh_net(42), digits(16, size=42)
    for epoch in range(3):
        snapshot(net, images, str(tmp_path), epoch)
    visualize.main(['--out', str(tmp_path), '--animate'])
    gif = Image.open(tmp_path / 'stn_training.gif')
    assert (gif.size, gif.n_frames) == ((640, 340), 3)
    assert os.path.getsize(tmp_path / 'stn_training.gif') < 500_000


def test_animate_without_snapshots_exits_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match='snapshots.npz not found'):
        visualize.main(['--out', str(tmp_path), '--animate'])
