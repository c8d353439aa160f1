"""The spatial transformer: identity at start, MXNet's coordinate convention, gradients."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from net import Net
from stn import IDENTITY, SpatialTransformer, affine_sample


def bilinear_reference(image, theta, out_shape):
    """Independent numpy version of GridGenerator(affine) + BilinearSampler for one image.

    Output pixel (i, j) sits at normalised (x_t, y_t) = (-1 + 2j/(W'-1), -1 + 2i/(H'-1));
    theta maps it to (x_s, y_s), which is pixel column (x_s + 1)(W - 1)/2 and row
    (y_s + 1)(H - 1)/2 of the input; neighbours outside the image count as zero.
    """
    h, w = image.shape
    y_t, x_t = np.meshgrid(np.linspace(-1, 1, out_shape[0]), np.linspace(-1, 1, out_shape[1]),
                           indexing='ij')
    a, b, tx, c, d, ty = theta
    col = (a * x_t + b * y_t + tx + 1) * (w - 1) / 2
    row = (c * x_t + d * y_t + ty + 1) * (h - 1) / 2
    c0, r0 = np.floor(col).astype(int), np.floor(row).astype(int)
    wc, wr = col - c0, row - r0

    def pixel(r, c):
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        return np.where(inside, image[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)], 0.0)

    return ((1 - wr) * (1 - wc) * pixel(r0, c0) + (1 - wr) * wc * pixel(r0, c0 + 1)
            + wr * (1 - wc) * pixel(r0 + 1, c0) + wr * wc * pixel(r0 + 1, c0 + 1))


def random_images(shape, seed=0):
    return nd.array(np.random.RandomState(seed).rand(*shape).astype(np.float32))


def warp(images, theta, target_shape):
    return affine_sample(nd, images, nd.array([theta] * images.shape[0]), target_shape)


def test_regressor_starts_with_zero_weights_and_identity_bias():
    block = SpatialTransformer()
    block.initialize(mx.init.Xavier())
    block(random_images((1, 1, 28, 28)))
    assert np.all(block.regressor.weight.data().asnumpy() == 0)
    np.testing.assert_array_equal(block.regressor.bias.data().asnumpy(), IDENTITY)


@pytest.mark.parametrize('k', [1, 3, 7])
def test_half_scale_theta_gives_the_centre_crop(k):
    size, target = 4 * k + 1, 2 * k + 1
    image = random_images((1, 1, size, size))
    out = warp(image, [0.5, 0, 0, 0, 0.5, 0], (target, target))
    np.testing.assert_allclose(out.asnumpy(), image.asnumpy()[:, :, k:3 * k + 1, k:3 * k + 1],
                               atol=1e-5)


@pytest.mark.parametrize('theta', [
    [1, 0, 0.3, 0, 1, -0.2],                                   # translation
    [1, 0, -1.5, 0, 1, 0.9],                                   # translation mostly outside
    [math.cos(0.5), -math.sin(0.5), 0, math.sin(0.5), math.cos(0.5), 0],  # rotation
    [0.8, 0.3, 0.1, -0.2, 1.1, 0.05],                          # general affine
])
@pytest.mark.parametrize('target_shape', [(28, 28), (13, 17)])
def test_warps_agree_with_an_independent_numpy_bilinear_sampler(theta, target_shape):
    image = random_images((1, 1, 28, 28), seed=1)
    out = warp(image, theta, target_shape).asnumpy()[0, 0]
    expected = bilinear_reference(image.asnumpy()[0, 0].astype(np.float64), theta, target_shape)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_target_shape_sets_the_output_size():
    block = SpatialTransformer(target_shape=(14, 10))
    block.initialize()
    out, theta = block(random_images((2, 1, 28, 28)))
    assert out.shape == (2, 1, 14, 10) and theta.shape == (2, 6)


def test_a_custom_localisation_block_is_used():
    localisation = nn.HybridSequential()
    localisation.add(nn.Flatten(), nn.Dense(16, activation='tanh'))
    block = SpatialTransformer(localisation=localisation)
    block.initialize()
    block(random_images((2, 1, 20, 20)))
    assert block.localisation is localisation
    assert localisation[1].weight.shape == (16, 400)


def one_update_of_the_regressor_bias(loc_lr_mult):
    mx.random.seed(0)
    block = SpatialTransformer(loc_lr_mult=loc_lr_mult)
    block.initialize(mx.init.Xavier())
    x = random_images((2, 1, 28, 28))
    block(x)
    trainer = gluon.Trainer(block.collect_params(), 'sgd', {'learning_rate': 0.1})
    before = block.regressor.bias.data().asnumpy().copy()
    with autograd.record():
        out, _ = block(x)
        loss = (out * nd.array(np.random.RandomState(3).randn(*out.shape))).sum()
    loss.backward()
    trainer.step(1)
    return block.regressor.bias.data().asnumpy() - before


def test_the_localisation_learning_rate_multiplier_scales_the_update():
    full, tenth = one_update_of_the_regressor_bias(1.0), one_update_of_the_regressor_bias(0.1)
    assert np.abs(full).max() > 0
    np.testing.assert_allclose(tenth, 0.1 * full, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize('size', [28, 42, 60])
@pytest.mark.parametrize('transform', ['affine', 'none'])
def test_the_classifier_takes_other_input_sizes(size, transform):
    net = Net(transform=transform)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    assert net(random_images((2, 1, size, size))).shape == (2, 10)
    if transform != 'none':
        out, _ = net.stn(random_images((2, 1, size, size)))
        assert out.shape == (2, 1, size, size)


def test_export_loads_with_symbolblock_imports_alone(tmp_path):
    net = Net()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = random_images((5, 1, 28, 28))
    logits = net(x)
    net.export(str(tmp_path / 'model'), epoch=3)
    loaded = gluon.SymbolBlock.imports(str(tmp_path / 'model-symbol.json'), ['data'],
                                       str(tmp_path / 'model-0003.params'))
    np.testing.assert_allclose(loaded(x).asnumpy(), logits.asnumpy(), atol=1e-5)
