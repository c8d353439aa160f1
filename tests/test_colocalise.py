"""colocalise.py (appendix A.2): the canvases and their boxes, the triplet hinge loss, the
crop boxes and the IoU metric, and a transformer that learns to find a digit without labels."""
import mxnet as mx
import numpy as np
import pytest

import colocalise
from net import Net


def squares(n, seed=0):
    """(n, 1, 28, 28) stand-in digits: a filled 14x14 square in the middle of the frame."""
    digits = np.zeros((n, 1, 28, 28), np.float32)
    digits[:, :, 7:21, 7:21] = 1
    return digits


def test_the_triplet_loss_is_zero_when_the_pair_is_closer_than_the_random_patch_by_the_margin():
    a = mx.nd.array([[0., 0.], [0., 0.]])
    same = a.copy()
    far = mx.nd.array([[1., 0.], [2., 0.]])           # squared distances 1 (= margin) and 4
    np.testing.assert_allclose(colocalise.triplet_loss(a, same, far).asnumpy(), [0, 0])


def test_the_triplet_loss_is_positive_otherwise_and_grows_with_the_pair_distance():
    a = mx.nd.array([[0., 0.], [0., 0.], [0., 0.]])
    positive = mx.nd.array([[0., 0.], [1., 0.], [3., 0.]])
    negative = mx.nd.array([[0.5, 0.], [0.5, 0.], [0.5, 0.]])     # squared distance 0.25
    loss = colocalise.triplet_loss(a, positive, negative).asnumpy()
    np.testing.assert_allclose(loss, [0.75, 1.75, 9.75])
    assert colocalise.triplet_loss(a, positive, negative, margin=0.5).asnumpy()[0] == 0.25


@pytest.mark.parametrize('a, b, expected', [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),           # the same box
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),      # half overlapping
    ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),          # touching
    ([0, 0, 10, 10], [2, 2, 7, 7], 25 / 100),        # one inside the other
    ([0, 0, 10, 10], [30, 30, 40, 40], 0.0),         # apart
])
def test_iou_on_hand_made_boxes(a, b, expected):
    assert colocalise.iou([a], [b])[0] == pytest.approx(expected)


def test_a_crop_box_is_the_region_its_pixels_read():
    # A native-resolution crop at the centre reads the 28x28 pixels around it; the identity
    # reads the whole 84x84 canvas: its 28 output pixels, 83/27 input pixels apart, reach
    # half an output pixel beyond the corner pixels' centres.
    whole, native = colocalise.crop_boxes([[1, 0, 0], [27 / 83, 0, 0]])
    half = 41.5 + 83 / 27 / 2
    np.testing.assert_allclose(whole, [42 - half, 42 - half, 42 + half, 42 + half], atol=1e-9)
    np.testing.assert_allclose(native, [28, 28, 56, 56], atol=1e-9)
    theta = colocalise.random_patches(200, np.random.default_rng(0))
    boxes = colocalise.crop_boxes(theta)
    np.testing.assert_allclose(boxes[:, 2:] - boxes[:, :2], 28, atol=1e-9)
    assert boxes.min() >= -1e-9 and boxes.max() <= 84 + 1e-9


@pytest.mark.parametrize('clutter', [0, 16])
def test_each_canvas_holds_its_whole_digit_inside_its_box(clutter):
    digits = squares(50)
    others = np.random.RandomState(1).rand(20, 1, 28, 28).astype(np.float32)
    images, boxes = colocalise.canvases(digits, others, np.random.default_rng(0), clutter)
    assert images.shape == (50, 1, 84, 84) and boxes.shape == (50, 4)
    for image, (x0, y0, x1, y1) in zip(images[:, 0], boxes.astype(int)):
        assert x1 - x0 == 28 and y1 - y0 == 28 and 0 <= x0 and x1 <= 84
        assert (image[y0 + 7:y0 + 21, x0 + 7:x0 + 21] == 1).all()    # the digit, whole
    ink_outside = images.sum() - 50 * 14 * 14
    assert (ink_outside > 0) == (clutter > 0)
    assert len({tuple(b) for b in boxes}) > 40                        # the place varies


def exported_encoder(folder):
    """A random MNIST CNN exported as train.py does: a stand-in for the trained encoder."""
    mx.random.seed(0)
    cnn = Net(model='cnn', transform='none', width=8)
    cnn.initialize(mx.init.Xavier())
    cnn.hybridize()
    cnn(mx.nd.zeros((1, 1, 28, 28)))
    cnn.export(str(folder / 'model'), epoch=1)
    return colocalise.load_encoder(str(folder))


def test_the_encoder_concatenates_the_cnns_two_stages_and_logits(tmp_path):
    encoder = exported_encoder(tmp_path)
    embedding = encoder(mx.nd.zeros((3, 1, 28, 28)))
    assert embedding.shape == (3, 8 * 10 * 10 + 16 * 4 * 4 + 10)
    assert all(p.grad_req == 'null' for p in encoder.collect_params().values())   # frozen


def test_the_transformer_starts_as_the_whole_canvas_and_its_loss_falls(tmp_path):
    encoder = exported_encoder(tmp_path)
    digits = squares(20)
    images, truth = colocalise.canvases(digits, digits, np.random.default_rng(0))
    fresh = colocalise.transformer()
    fresh.initialize()
    np.testing.assert_allclose(colocalise.found_boxes(fresh, images[:2]),
                               colocalise.crop_boxes([[1, 0, 0]] * 2), atol=1e-6)
    stn, losses = colocalise.colocalise(images, encoder, steps=60, batch=8)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
