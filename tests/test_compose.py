"""Compositional transformers (IC-STN and c-STN, Lin & Lucey 2017): ``iterations`` K steps
that compose their updates as 3x3 matrices and warp the original input once; K = 1 is the
paper's transformer, unchanged."""
import json

import mxnet as mx
import numpy as np
import onnx
import onnxruntime
import pytest

import net
import stn
from stngluon import onnx_export, sampler
from stngluon.config import ConfigError, RunConfig

SHAPE = (5, 1, 28, 28)
SAMPLERS = ('BilinearSampler', sampler.OP, sampler.OP_GRID_ONLY)   # the built-in or a threaded one


def block(transform='affine', iterations=4, per_step=False, seed=0):
    """A transformer whose regressors have small random weights, so that every step
    predicts a different update, away from the identity."""
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    b = stn.SpatialTransformer(transform=transform, iterations=iterations, per_step=per_step,
                               prefix='stn_')
    b.initialize(mx.init.Xavier())
    b(mx.nd.zeros(SHAPE))
    for name, p in b.collect_params().items():
        if 'regressor' in name:
            scale = 0.002 if name.endswith('weight') else 0.05
            p.set_data(p.data() + mx.nd.array(rng.normal(0, scale, p.shape)))
    return b


def images(seed=1):
    return mx.nd.array(np.random.RandomState(seed).rand(*SHAPE))


def matrix(theta, transform):
    return stn.theta_matrix(mx.nd, mx.nd.array(theta), transform).asnumpy()


def test_one_iteration_is_the_papers_transformer_bit_for_bit():
    b, x = block(iterations=1), images()
    out, theta = b(x)
    expected_theta = b.regressor(b.localisation(x))
    expected = mx.nd.BilinearSampler(x, mx.nd.GridGenerator(
        expected_theta, transform_type='affine', target_shape=SHAPE[2:]))
    assert np.array_equal(theta.asnumpy(), expected_theta.asnumpy())
    assert np.array_equal(out.asnumpy(), expected.asnumpy())
    b.hybridize()
    b(x)
    graph = json.loads(b._cached_graph[1].tojson())
    ops = [node['op'] for node in graph['nodes']]
    assert sum(op in SAMPLERS for op in ops) == 1 and 'batch_dot' not in ops
    assert sorted(b.collect_params()) == sorted(block(iterations=1, seed=3).collect_params())
    assert not any('step' in name for name in b.collect_params())


@pytest.mark.parametrize('transform', stn.COMPOSABLE)
@pytest.mark.parametrize('per_step', [False, True], ids=['IC-STN', 'c-STN'])
def test_the_composed_parameters_are_the_product_of_each_steps_update(transform, per_step):
    b, x = block(transform, iterations=3, per_step=per_step), images()
    _, theta = b(x)
    grid_of = stn.FAMILIES[transform].grid
    constant = b.grid_constant.data() if hasattr(b, 'grid_constant') else None
    product, seen = np.tile(np.eye(3), (SHAPE[0], 1, 1)), x
    for k in range(3):   # each step reads the input warped by the product so far
        localisation, regressor = b.step(k)
        update = regressor(localisation(seen)).asnumpy()
        assert not np.allclose(update, stn.identity_theta(transform), atol=1e-3)
        product = product @ matrix(update, transform)
        so_far = stn.matrix_theta(mx.nd, mx.nd.array(product), transform)
        seen = mx.nd.BilinearSampler(x, grid_of(mx.nd, so_far, constant, SHAPE[2:]))
    assert product.shape == (SHAPE[0], 3, 3)
    np.testing.assert_allclose(matrix(theta.asnumpy(), transform), product / product[:, 2:, 2:],
                               rtol=1e-5, atol=1e-6)
    assert [t.shape for t in b.steps(x)] == [theta.shape] * 3
    np.testing.assert_allclose(b.steps(x)[-1].asnumpy(), theta.asnumpy(), rtol=1e-6)


@pytest.mark.parametrize('transform', stn.COMPOSABLE)
def test_the_output_is_one_sampling_of_the_original_input_on_the_composed_grid(transform):
    b, x = block(transform, iterations=4), images()
    out, theta = b(x)
    grid = stn.sampling_grid(theta.asnumpy(), transform, SHAPE[2:])
    np.testing.assert_array_equal(out.asnumpy(),
                                  mx.nd.BilinearSampler(x, mx.nd.array(grid)).asnumpy())
    b.hybridize()
    b(x)
    graph = json.loads(b._cached_graph[1].tojson())
    samplers = [node for node in graph['nodes'] if node['op'] in SAMPLERS]
    data = graph['nodes'][samplers[0]['inputs'][0][0]]['name']
    assert len(samplers) == 4    # three looks at the warp so far, one output
    assert all(graph['nodes'][s['inputs'][0][0]]['name'] == data for s in samplers)
    assert data == 'data'        # every sampler reads the original input: none resamples


def test_a_fresh_compositional_transformer_returns_its_input():
    b = stn.SpatialTransformer(iterations=4, transform='projective')
    b.initialize(mx.init.Xavier())
    x = images()
    out, theta = b(x)
    np.testing.assert_allclose(theta.asnumpy(), np.tile(stn.identity_theta('projective'), (5, 1)))
    np.testing.assert_allclose(out.asnumpy(), x.asnumpy(), atol=1e-5)   # the sampler rounds


def trained_parameters(**kwargs):
    n = net.Net(model='cnn', width=36, **kwargs)
    n.initialize(mx.init.Xavier())
    n(mx.nd.zeros(SHAPE))
    return net.trainable_params(n), net.trainable_params(n.stn)


def test_ic_stn_shares_one_localisation_net_and_c_stn_has_one_per_step():
    one, one_stn = trained_parameters()
    shared, shared_stn = trained_parameters(iterations=4)
    separate, separate_stn = trained_parameters(iterations=4, loc_per_step=True)
    assert shared == one and shared_stn == one_stn
    assert separate_stn == 4 * one_stn and separate == one + 3 * one_stn


@pytest.mark.parametrize('per_step', [False, True], ids=['IC-STN', 'c-STN'])
def test_four_steps_export_import_and_run_in_onnx_runtime_as_in_mxnet(tmp_path, per_step):
    n = net.Net(model='cnn', width=8, iterations=4, transform='affine', loc_per_step=per_step)
    n.initialize(mx.init.Xavier())
    n.hybridize()
    x = images(2)
    n(x)
    rng = np.random.RandomState(4)
    regressor = n.stn.regressor   # every step zooms out a little and shifts: part reads zeros
    regressor.weight.set_data(mx.nd.array(rng.normal(0, 0.002, regressor.weight.shape)))
    regressor.bias.set_data(mx.nd.array([1.2, 0.1, 0.2, -0.1, 0.9, -0.15]))
    logits, (transformed, _) = n(x).asnumpy(), n.stn(x)
    prefix = str(tmp_path / 'model')
    n.export(prefix)
    imported = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'], prefix + '-0000.params')
    np.testing.assert_array_equal(imported(x).asnumpy(), logits)
    path = onnx_export.export(prefix)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    got_logits, got_transformed = session.run(None, {'data': x.asnumpy()})
    np.testing.assert_allclose(got_transformed, transformed.asnumpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_logits, logits, atol=1e-4, rtol=0)


def test_what_does_not_compose_is_refused_with_the_reason():
    with pytest.raises(ValueError, match='tps transformers do not compose'):
        stn.SpatialTransformer(transform='tps', iterations=2)
    with pytest.raises(ValueError, match='pass a function'):
        stn.SpatialTransformer(localisation=stn.default_localisation(), iterations=2,
                               per_step=True)
    with pytest.raises(ValueError, match='iterations must be an int >= 1'):
        stn.SpatialTransformer(iterations=0)
    with pytest.raises(ConfigError, match='--iterations: 2 steps need --api gluon'):
        RunConfig(transform='tps', iterations=2)
    with pytest.raises(ConfigError, match='--iterations'):
        RunConfig(api='symbol', iterations=2)
    with pytest.raises(ConfigError, match='--loc-per-step: .* needs --iterations K > 1'):
        RunConfig(loc_per_step=True)


def test_the_network_is_named_after_its_variant():
    assert RunConfig(model='cnn', iterations=4).display_name == 'IC-STN-4 (affine) + CNN'
    assert RunConfig(model='fcn', transform='projective', iterations=2,
                     loc_per_step=True).display_name == 'c-STN-2 (projective) + FCN'
    assert RunConfig(model='cnn').display_name == 'ST-CNN (affine)'


def test_the_pictures_show_where_each_step_reads(tmp_path):
    """compare.jpg of a compositional run: one panel and one outline per step, from the
    exported graph's step nodes; each step's grid is the one its composed theta gives."""
    from PIL import Image
    from stngluon import pictures, rundir
    n = net.Net(model='fcn', width=16, iterations=3, transform='projective')
    n.initialize(mx.init.Xavier())
    n.hybridize()
    x = images(3)
    n(x)
    n.stn.regressor.bias.set_data(mx.nd.array([0.9, 0.05, 0.1, -0.05, 0.9, 0.1, 0.02, 0.0]))
    n.export(str(tmp_path / 'model'), epoch=1)
    rundir.write_config(str(tmp_path), {**RunConfig(model='fcn', width=16, iterations=3,
                                                    transform='projective').as_dict(),
                                        'epochs': 1})
    transformed, grid, logits = (a.asnumpy() for a in pictures.load_model(str(tmp_path))(x))
    assert transformed.shape == (5, 3, 28, 28) and grid.shape == (5, 6, 28, 28)
    for k, theta in enumerate(n.stn.steps(x)):   # each step zooms out further
        np.testing.assert_allclose(grid[:, 2 * k:2 * k + 2],
                                   stn.sampling_grid(theta.asnumpy(), 'projective', (28, 28)),
                                   atol=1e-5)
    np.testing.assert_allclose(logits, n(x).asnumpy(), atol=1e-5)
    path = pictures.compare_run(str(tmp_path), x.asnumpy())
    assert Image.open(path).size == (2000, 540)   # the inputs and three steps
