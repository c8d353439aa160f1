"""The transformer families of stn.py (affine, attention, projective, thin-plate spline):
each starts as the identity, follows the documented theta convention, has the gradient
autograd says, hybridizes, and survives export and SymbolBlock.imports."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

import stn
from stngluon.geometry import control_points
from stn import SpatialTransformer, affine_grid, affine_sample, grid_constant, guard, identity_theta

FAMILIES = list(stn.FAMILIES)   # every registered family meets this specification


def random_images(shape, seed=0):
    return nd.array(np.random.RandomState(seed).rand(*shape).astype(np.float32))


def grid_of(family, theta, target_shape, grid=4):
    """The sampling grid (N, 2, H', W') of ``family`` for theta (N, T), imperatively."""
    theta = nd.array(theta) if not isinstance(theta, nd.NDArray) else theta
    constant = grid_constant(family, target_shape, grid)
    constant = None if constant is None else nd.array(constant)
    return stn.FAMILIES[family].grid(nd, theta, constant, target_shape)


def sample(family, images, theta, target_shape, grid=4):
    return nd.BilinearSampler(images, grid_of(family, theta, target_shape, grid))


def identity_grid(target_shape):
    """(1, 2, H', W'): x then y of each output pixel centre, -1 and +1 at the corner pixels."""
    y, x = np.meshgrid(np.linspace(-1, 1, target_shape[0]), np.linspace(-1, 1, target_shape[1]),
                       indexing='ij')
    return np.stack([x, y])[None]


def away_from_identity(family, n=1, seed=0):
    """A theta (n, T) of ``family`` that is a real, moderate warp."""
    rng = np.random.RandomState(seed)
    base = {'affine': [0.9, 0.2, 0.1, -0.15, 1.05, -0.05],
            'attention': [0.8, 0.1, -0.05],
            'projective': [0.9, 0.2, 0.1, -0.15, 1.05, -0.05, 0.15, -0.1]}
    if family not in base:   # tps, and a family added later: the identity, moved
        identity = identity_theta(family)
        return identity + rng.uniform(-0.15, 0.15, (n, len(identity)))
    return np.array([base[family]] * n) + rng.uniform(-0.02, 0.02, (n, len(base[family])))


def moved_block(family, target_shape=None, seed=2):
    """A transformer whose regressor has random weights, so theta varies with the input."""
    block = SpatialTransformer(transform=family, target_shape=target_shape)
    block.initialize(mx.init.Xavier())
    x = random_images((3, 1, 28, 28))
    block(x)
    size = stn.theta_size(family)
    block.regressor.weight.set_data(nd.array(np.random.RandomState(seed).randn(size, 32) * 0.01))
    block.regressor.bias.set_data(nd.array(away_from_identity(family)[0]))
    return block, x


# ---- every family --------------------------------------------------------------------------

@pytest.mark.parametrize('hybridize', [False, True])
@pytest.mark.parametrize('family', FAMILIES)
def test_a_fresh_transformer_of_every_family_returns_its_input(family, hybridize):
    block = SpatialTransformer(transform=family)
    block.initialize(mx.init.Uniform(1.0))   # must not override the identity start
    if hybridize:
        block.hybridize()
    x = random_images((4, 2, 28, 20))
    out, theta = block(x)
    assert out.shape == x.shape
    assert (out - x).abs().max().asscalar() < 1e-5
    np.testing.assert_array_equal(theta.asnumpy(), np.tile(identity_theta(family), (4, 1)))


@pytest.mark.parametrize('family, size', [('affine', 6), ('attention', 3), ('projective', 8),
                                          ('tps', 32)])
def test_the_regressor_predicts_the_familys_parameters_from_zero_weights_and_identity_bias(
        family, size):
    block = SpatialTransformer(transform=family)
    block.initialize(mx.init.Xavier())
    _, theta = block(random_images((2, 1, 28, 28)))
    assert theta.shape == (2, size) and stn.theta_size(family) == size
    assert np.all(block.regressor.weight.data().asnumpy() == 0)
    np.testing.assert_array_equal(block.regressor.bias.data().asnumpy(), identity_theta(family))


def test_the_identity_parameters_of_each_family_are_documented_values():
    np.testing.assert_array_equal(identity_theta('affine'), [1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(identity_theta('attention'), [1, 0, 0])          # s, tx, ty
    np.testing.assert_array_equal(identity_theta('projective'), [1, 0, 0, 0, 1, 0, 0, 0])
    # TPS: the control points, row by row from the top left, all x first, then all y.
    np.testing.assert_array_equal(identity_theta('tps', 2), [-1, 1, -1, 1, -1, -1, 1, 1])
    assert len(identity_theta('tps')) == 2 * 16


@pytest.mark.parametrize('family', FAMILIES)
def test_target_shape_sets_the_output_size_of_every_family(family):
    block = SpatialTransformer(transform=family, target_shape=(14, 10))
    block.initialize()
    block.hybridize()
    x = random_images((2, 1, 28, 28))
    out, _ = block(x)
    assert out.shape == (2, 1, 14, 10)
    # Still the identity: the output pixel centres are those of a 14x10 resampling.
    np.testing.assert_allclose(out.asnumpy(), affine_sample(
        nd, x, nd.array([identity_theta('affine')] * 2), (14, 10)).asnumpy(), atol=1e-5)


@pytest.mark.parametrize('family', FAMILIES)
def test_numerical_gradient_wrt_theta_matches_autograd(family):
    # MXNet's sampler is float32-only: central differences with a step of 1e-3 on a
    # smooth image, compared as vectors (relative error < 1%).
    yy, xx = np.mgrid[0:24, 0:24]
    image = nd.array(np.exp(-((xx - 11.3) ** 2 + (yy - 12.6) ** 2) / 30.0)[None, None])
    weights = nd.array(np.random.RandomState(0).randn(1, 1, 20, 20))
    theta0 = away_from_identity(family)

    def objective(theta):
        return (sample(family, image, nd.array(theta), (20, 20)) * weights).sum()

    theta = nd.array(theta0)
    theta.attach_grad()
    with autograd.record():
        value = objective(theta)
    value.backward()
    eps, size = 1e-3, theta0.shape[1]
    numeric = np.array([(objective(theta0 + eps * np.eye(size)[i]).asscalar()
                         - objective(theta0 - eps * np.eye(size)[i]).asscalar()) / (2 * eps)
                        for i in range(size)])
    analytic = theta.grad.asnumpy()[0]
    assert np.abs(numeric).max() > 0.5  # the objective really depends on theta
    assert np.linalg.norm(analytic - numeric) < 1e-2 * np.linalg.norm(numeric)


@pytest.mark.parametrize('family', FAMILIES)
def test_hybridized_and_imperative_outputs_agree(family):
    block, x = moved_block(family, target_shape=(20, 24))
    out, theta = block(x)
    unmoved = sample('affine', x, [identity_theta()] * 3, (20, 24))
    assert (out - unmoved).abs().max().asscalar() > 0.05
    block.hybridize()
    out_h, theta_h = block(x)
    np.testing.assert_allclose(out_h.asnumpy(), out.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(theta_h.asnumpy(), theta.asnumpy(), atol=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_export_and_symbolblock_imports_round_trip(family, tmp_path):
    block, x = moved_block(family)
    block.hybridize()
    out, theta = block(x)
    block.export(str(tmp_path / 'stn'), epoch=1)
    loaded = gluon.SymbolBlock.imports(str(tmp_path / 'stn-symbol.json'), ['data'],
                                       str(tmp_path / 'stn-0001.params'))
    out_l, theta_l = loaded(x)
    np.testing.assert_allclose(out_l.asnumpy(), out.asnumpy(), atol=1e-6)
    np.testing.assert_allclose(theta_l.asnumpy(), theta.asnumpy(), atol=1e-6)
    saved = {k.split(':', 1)[1] for k in mx.nd.load(str(tmp_path / 'stn-0001.params'))}
    constant = {'projective': {'target_grid'}, 'tps': {'tps_basis'}}.get(family, set())
    assert {name[len(block.prefix):] for name in saved} >= constant | {'regressor_weight'}


@pytest.mark.parametrize('family', ['projective', 'tps'])
def test_the_grid_constant_is_not_trained(family):
    block, x = moved_block(family)
    constant = block.grid_constant.data().copy()
    trainer = gluon.Trainer(block.collect_params(), 'sgd', {'learning_rate': 0.1})
    before = block.regressor.bias.data().copy()
    with autograd.record():
        out, _ = block(x)
        loss = (out * random_images(out.shape, seed=4)).sum()
    loss.backward()
    trainer.step(1)
    assert block.grid_constant.grad_req == 'null'
    assert (block.grid_constant.data() - constant).abs().max().asscalar() == 0
    assert (block.regressor.bias.data() - before).abs().max().asscalar() > 0


@pytest.mark.parametrize('family', ['projective', 'tps'])
def test_saved_parameters_load_into_a_fresh_block_before_its_first_batch(family, tmp_path):
    block, x = moved_block(family)
    out, _ = block(x)
    block.save_parameters(str(tmp_path / 'p.params'))
    fresh = SpatialTransformer(transform=family)
    fresh.load_parameters(str(tmp_path / 'p.params'))
    np.testing.assert_allclose(fresh(x)[0].asnumpy(), out.asnumpy(), atol=1e-6)


def test_an_unknown_family_or_control_grid_is_a_clear_error():
    with pytest.raises(ValueError, match='transform must be one of'):
        SpatialTransformer(transform='similarity')
    with pytest.raises(ValueError, match='tps_grid must be'):
        SpatialTransformer(transform='tps', tps_grid=1)


# ---- attention -----------------------------------------------------------------------------

def test_attention_is_the_affine_transform_with_one_scale_and_a_translation():
    x = random_images((2, 1, 28, 28), seed=1)
    s, tx, ty = 0.6, 0.2, -0.3
    np.testing.assert_allclose(sample('attention', x, [[s, tx, ty]] * 2, (16, 16)).asnumpy(),
                               affine_sample(nd, x, nd.array([[s, 0, tx, 0, s, ty]] * 2),
                                             (16, 16)).asnumpy(), atol=1e-6)


# ---- projective ----------------------------------------------------------------------------

@pytest.mark.parametrize('target_shape', [(28, 28), (13, 17)])
def test_projective_with_an_affine_homography_equals_the_affine_transformer(target_shape):
    affine = [0.8, 0.3, 0.1, -0.2, 1.1, 0.05]
    blocks = {}
    for family, bias in [('affine', affine), ('projective', affine + [0, 0])]:
        block = SpatialTransformer(transform=family, target_shape=target_shape)
        block.initialize()
        block.regressor.bias.set_data(nd.array(bias))  # zero weights: theta = bias
        blocks[family] = block
    x = random_images((2, 1, 28, 28), seed=1)
    np.testing.assert_allclose(blocks['projective'](x)[0].asnumpy(),
                               blocks['affine'](x)[0].asnumpy(), atol=1e-5)


def test_the_projective_grid_divides_by_the_third_homogeneous_coordinate():
    theta = np.array([[0.9, 0.2, 0.1, -0.15, 1.05, -0.05, 0.3, -0.2]])
    h = np.append(theta[0], 1).reshape(3, 3)
    y, x = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 7), indexing='ij')
    u, v, w = np.einsum('ij,jhw->ihw', h, np.stack([x, y, np.ones_like(x)]))
    np.testing.assert_allclose(grid_of('projective', theta, (5, 7)).asnumpy()[0],
                               np.stack([u / w, v / w]), atol=1e-5)


def test_the_projective_denominator_keeps_its_sign_and_stays_away_from_zero():
    eps = stn.PROJECTIVE_EPS
    w = nd.array([-2, -1e-5, 0, 1e-5, 3])
    np.testing.assert_allclose(guard(nd, w).asnumpy(), [-2, -eps, eps, eps, 3], rtol=1e-6)
    # A homography whose horizon crosses the output: the grid stays finite there.
    grid = grid_of('projective', [[1, 0, 0, 0, 1, 0, 1, 0]], (9, 9)).asnumpy()
    assert np.isfinite(grid).all() and np.abs(grid).max() <= 1 / eps + 1e-3


# ---- thin-plate spline ---------------------------------------------------------------------

@pytest.mark.parametrize('grid, target_shape', [(4, (28, 28)), (3, (13, 17)), ((2, 5), (20, 20))])
def test_tps_with_undisplaced_control_points_is_the_identity(grid, target_shape):
    theta = [identity_theta('tps', grid)]
    np.testing.assert_allclose(grid_of('tps', theta, target_shape, grid).asnumpy(),
                               identity_grid(target_shape), atol=1e-5)
    x = random_images((1, 1, *target_shape), seed=3)
    assert (sample('tps', x, theta, target_shape, grid) - x).abs().max().asscalar() < 1e-5


def test_tps_passes_through_its_displaced_control_points():
    # A 4x4 output grid has its pixel centres exactly on the 4x4 control points.
    source = identity_theta('tps') + np.random.RandomState(5).uniform(-0.3, 0.3, 32)
    grid = grid_of('tps', [source], (4, 4)).asnumpy()[0]                    # (2, 4, 4)
    np.testing.assert_allclose(grid.reshape(2, 16), source.reshape(2, 16), atol=1e-5)


def test_tps_reproduces_an_affine_map_of_its_control_points():
    a = np.array([[0.8, 0.3, 0.1], [-0.2, 1.1, 0.05]])
    moved = control_points() @ a[:, :2].T + a[:, 2]                         # (16, 2)
    theta = [moved.T.ravel()]
    np.testing.assert_allclose(grid_of('tps', theta, (13, 17)).asnumpy(),
                               grid_of('affine', [a.ravel()], (13, 17)).asnumpy(), atol=1e-5)


def test_the_tps_grid_is_the_thin_plate_spline_through_the_control_points():
    """An independent solve of paper section 3.2's TPS: f(p) = a0 + a1 x + a2 y
    + sum_k w_k U(|p - c_k|), U(r) = r^2 log r^2, with f(c_k) = source_k and the side
    conditions sum w = sum w x = sum w y = 0, solved for x and y separately."""
    c = control_points(3)
    source = c + np.random.RandomState(6).uniform(-0.2, 0.2, c.shape)

    def u(d2):
        return np.where(d2 == 0, 0, d2 * np.log(np.where(d2 == 0, 1, d2)))

    k = len(c)
    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = u(((c[:, None] - c[None]) ** 2).sum(-1))
    system[:k, k], system[:k, k + 1:] = 1, c
    system[k, :k], system[k + 1:, :k] = 1, c.T
    coeffs = np.linalg.solve(system, np.concatenate([source, np.zeros((3, 2))]))   # (K+3, 2)
    y, x = np.meshgrid(np.linspace(-1, 1, 6), np.linspace(-1, 1, 5), indexing='ij')
    p = np.stack([x.ravel(), y.ravel()], 1)
    expected = (u(((p[:, None] - c[None]) ** 2).sum(-1)) @ coeffs[:k] + coeffs[k]
                + p @ coeffs[k + 1:])                                              # (P, 2)
    grid = grid_of('tps', [source.T.ravel()], (6, 5), grid=3).asnumpy()[0]
    np.testing.assert_allclose(grid.reshape(2, -1).T, expected, atol=1e-5)


def test_the_tps_control_grid_is_configurable():
    block = SpatialTransformer(transform='tps', tps_grid=(3, 5))
    block.initialize()
    x = random_images((2, 1, 28, 28))
    out, theta = block(x)
    assert theta.shape == (2, 30) and block.grid_constant.shape == (15, 28, 28)
    assert (out - x).abs().max().asscalar() < 1e-5


# ---- the registry --------------------------------------------------------------------------

def shift_family():
    """A translation-only family, theta = [tx, ty], written as one registry entry."""
    def grid(F, theta, constant, target_shape):
        tx, ty = F.split(theta, num_outputs=2, axis=1)
        one, zero = F.ones_like(tx), F.zeros_like(tx)
        return affine_grid(F, F.concat(one, zero, tx, zero, one, ty, dim=1), target_shape)
    return stn.Family(identity=lambda tps_grid: [0, 0], constant=None, constant_name=None,
                      grid=grid)


@pytest.mark.parametrize('hybridize', [False, True])
def test_a_new_family_is_one_registry_entry_that_drives_the_block_and_sampling_grid(
        monkeypatch, hybridize):
    monkeypatch.setitem(stn.FAMILIES, 'shift', shift_family())
    block = SpatialTransformer(transform='shift', target_shape=(14, 10))
    block.initialize()
    x = random_images((2, 1, 28, 28))
    np.testing.assert_allclose(block(x)[0].asnumpy(), nd.BilinearSampler(x, nd.array(
        np.tile(identity_grid((14, 10)), (2, 1, 1, 1)))).asnumpy(), atol=1e-5)   # starts as identity
    block.regressor.bias.set_data(nd.array([0.3, -0.2]))
    if hybridize:
        block.hybridize()
    out, theta = block(x)
    expected = [[1, 0, 0.3, 0, 1, -0.2]] * 2
    np.testing.assert_allclose(out.asnumpy(), affine_sample(nd, x, nd.array(expected), (14, 10))
                               .asnumpy(), atol=1e-5)
    np.testing.assert_allclose(stn.sampling_grid(theta.asnumpy(), 'shift', (14, 10)),
                               stn.sampling_grid(expected, 'affine', (14, 10)), atol=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_the_block_samples_on_the_grid_sampling_grid_gives_for_its_theta(family):
    block, x = moved_block(family, target_shape=(20, 24))
    block.hybridize()
    out, theta = block(x)
    grid = stn.sampling_grid(theta.asnumpy(), family, (20, 24))
    np.testing.assert_allclose(nd.BilinearSampler(x, nd.array(grid)).asnumpy(), out.asnumpy(),
                               atol=1e-5)


def test_the_command_line_offers_every_registered_family():
    import train
    choices = next(a.choices for a in train.parser()._actions if a.dest == 'transform' and a.choices)
    assert set(choices) == {'none', *stn.FAMILIES}
