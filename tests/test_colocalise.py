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
    encoder, side = encoder
    embedding = encoder(mx.nd.zeros((3, 1, 28, 28)))
    assert embedding.shape == (3, 8 * 10 * 10 + 16 * 4 * 4 + 10)
    assert all(p.grad_req == 'null' for p in encoder.collect_params().values())   # frozen
    assert side == 28                                                # the crops it reads


def test_the_transformer_starts_as_the_whole_canvas_and_its_loss_falls(tmp_path):
    encoder, side = exported_encoder(tmp_path)
    digits = squares(20)
    images, truth = colocalise.canvases(digits, digits, np.random.default_rng(0))
    fresh = colocalise.transformer()
    fresh.initialize()
    np.testing.assert_allclose(colocalise.found_boxes(fresh, images[:2]),
                               colocalise.crop_boxes([[1, 0, 0]] * 2), atol=1e-6)
    stn, losses = colocalise.colocalise(images, encoder, steps=60, batch=8)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


@pytest.mark.parametrize('side', [28, 42])
def test_the_crop_of_a_digits_box_is_the_digit_at_the_encoders_side(side):
    digits = np.random.RandomState(0).rand(6, 1, 28, 28).astype(np.float32)
    images, boxes = colocalise.canvases(digits, digits, np.random.default_rng(0))
    theta = colocalise.box_theta(boxes, size=side)
    np.testing.assert_allclose(colocalise.crop_boxes(theta, size=side), boxes, atol=1e-4)
    crops = colocalise.attention_crop(mx.nd.array(images), mx.nd.array(theta), side).asnumpy()
    assert crops.shape == (6, 1, side, side)
    if side == 28:                                      # native resolution: pixel for pixel
        np.testing.assert_allclose(crops, digits, atol=1e-4)
    patches = colocalise.crop_boxes(colocalise.random_patches(100, np.random.default_rng(0),
                                                              size=side), size=side)
    np.testing.assert_allclose(patches[:, 2:] - patches[:, :2], 28, atol=1e-4)   # digit-sized


def test_the_logits_embedding_can_be_normalised_to_unit_length(tmp_path):
    exported_encoder(tmp_path)
    encoder, side = colocalise.load_encoder(str(tmp_path), embedding='logits', normalise=True)
    embedding = encoder(mx.nd.random.uniform(shape=(4, 1, 28, 28))).asnumpy()
    assert embedding.shape == (4, 10)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1, rtol=1e-5)


def test_the_landscape_prices_every_crop_place_and_prefers_the_digit_for_a_pixel_encoder():
    # Identical digits and an encoder that is the pixels themselves: the digit's own box
    # gives identical crops far from most random patches (loss 0); an empty crop is as
    # close to an empty patch as to the other empty crops (loss about the margin).
    images, boxes = colocalise.canvases(squares(40), squares(40), np.random.default_rng(0))
    pixels = lambda crops: crops.reshape((crops.shape[0], -1))             # noqa: E731
    losses = colocalise.landscape(images, boxes, pixels)
    assert list(losses) == ['digit box', 'box +-4 px', 'box +-12 px', 'canvas centre',
                            'empty (off the canvas)', 'whole canvas', 'zoomed out 3x']
    assert losses['digit box'] == min(losses.values()) and losses['digit box'] < 0.05
    assert 0.2 < losses['empty (off the canvas)'] <= 1


def test_the_first_step_leads_toward_the_digit_when_the_encoder_rewards_ink_in_the_middle():
    # Each image twice (so the pair agrees) and an encoder whose embedding is the ink in
    # the crop's middle: the random patch, mostly empty, pushes a crop beside its digit
    # onto it.
    images, boxes = colocalise.canvases(squares(10), squares(10), np.random.default_rng(0))
    middle = lambda crops: crops[:, :, 7:21, 7:21].mean(axis=(2, 3))       # noqa: E731
    beside = colocalise.box_theta(boxes + 6)
    share = [colocalise.toward_digit(images[[i, i]], boxes[[i, i]], middle, beside[i])
             for i in range(10)]
    assert np.mean(share) == 1
