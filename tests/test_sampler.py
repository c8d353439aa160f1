"""The threaded bilinear sampler (sampler.py, ops/bilinear_sampler.cc): the same bits as
MXNet's BilinearSampler forward and backward, the built-in operator wherever the library
is missing or stale or it is asked for, and exports that never need it."""
import json
import os

import numpy as np
import pytest

from stngluon import compat  # noqa: F401
import mxnet as mx

from stngluon import sampler
from conftest import brief_train_py, in_child
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def threaded(op_library):
    """The threaded sampler, from the operator library (conftest.py)."""
    return getattr(mx.nd, sampler.OP)


def run(op, data, grid, head):
    """[output, data gradient, grid gradient] of ``op`` on copies of data and grid, the
    output's gradient ``head``, as numpy arrays."""
    x, g = data.copy(), grid.copy()
    x.attach_grad()
    g.attach_grad()
    with mx.autograd.record():
        out = op(x, g)
    out.backward(head)
    return [out.asnumpy(), x.grad.asnumpy(), g.grad.asnumpy()]


@pytest.mark.parametrize('data_shape, out_hw', [
    ((8, 1, 42, 42), (42, 42)),    # the RTS ST-CNN's
    ((5, 3, 28, 28), (10, 12)),    # channels, a smaller output of another aspect
    ((3, 2, 7, 9), (11, 5)),       # a larger output than the input
])
def test_it_computes_the_same_bits_as_BilinearSampler_forward_and_backward(threaded, data_shape,
                                                                          out_hw):
    rng = np.random.RandomState(sum(data_shape))
    data = mx.nd.array(rng.randn(*data_shape))
    # beyond [-1, 1] too, where the zero padding decides; and exact pixel centres
    grid = rng.uniform(-1.4, 1.4, (data_shape[0], 2, *out_hw))
    grid[:, :, 0, 0] = [-1, 1]
    grid = mx.nd.array(grid)
    head = mx.nd.array(rng.randn(data_shape[0], data_shape[1], *out_hw))
    results = [run(op, data, grid, head) for op in (mx.nd.BilinearSampler, threaded)]
    for builtin, ours, what in zip(*results, ['output', 'data gradient', 'grid gradient']):
        assert np.array_equal(builtin, ours), what


def test_for_an_input_without_gradient_it_computes_the_grid_gradient_alone(threaded):
    """stn_bilinear_sampler_grid_only: the same output and grid gradient, bit for bit; the
    input's gradient (which it skips) zero."""
    rng = np.random.RandomState(0)
    data, grid = mx.nd.array(rng.randn(6, 2, 42, 42)), mx.nd.array(rng.uniform(-1.2, 1.2, (6, 2, 30, 30)))
    head = mx.nd.array(rng.randn(6, 2, 30, 30))
    (out, _, grid_grad), (out2, input_grad, grid_grad2) = [
        run(op, data, grid, head) for op in (threaded, getattr(mx.nd, sampler.OP_GRID_ONLY))]
    assert np.array_equal(out, out2) and np.array_equal(grid_grad, grid_grad2)
    assert not input_grad.any()


def test_the_networks_input_transformer_skips_the_images_gradient_and_conv1s_does_not(
        threaded, tmp_path):
    import net
    from stngluon.config import RunConfig
    for flags, expected in ((['--dataset', 'rts', '--model', 'cnn'], [sampler.OP_GRID_ONLY]),
                            (['--dataset', 'rts', '--model', 'cnn', '--stn-at', 'conv1'], [sampler.OP])):
        model = net.build(RunConfig.from_flags(flags).resolved())
        model.initialize()
        model.hybridize()
        model(mx.nd.zeros((2, 1, 42, 42)))
        model.export(str(tmp_path / 'net'))   # HybridBlock.export: the graph as it runs
        graph = json.load(open(tmp_path / 'net-symbol.json'))
        assert [n['op'] for n in graph['nodes'] if n['op'].startswith('stn_bilinear')] == expected


def test_a_transformer_runs_the_threaded_sampler_on_two_threads(threaded):
    import stn
    block = stn.SpatialTransformer(transform='affine', target_shape=(28, 28))
    block.initialize()
    block.hybridize()
    x = mx.sym.var('data')
    names = block(x)[0].get_internals().list_outputs()
    assert any(name.endswith('bilinearsampler0_output') for name in names)
    graph = json.loads(block(x)[0].tojson())
    assert sampler.OP in {node['op'] for node in graph['nodes']}


SAMPLER_NAME = ('from stngluon import sampler; import stn, mxnet as mx; '
                'b = stn.SpatialTransformer(transform="affine"); '
                'b.initialize(); b(mx.nd.ones((2, 1, 28, 28))); print(sampler.name())')


def test_it_is_not_used_where_the_library_is_missing_or_the_builtin_one_is_asked_for(tmp_path):
    assert in_child(SAMPLER_NAME, STN_OPS_LIBRARY=str(tmp_path / 'missing.so'),
                    OMP_NUM_THREADS='2') == 'BilinearSampler'
    assert in_child(SAMPLER_NAME, STN_SAMPLER='builtin', OMP_NUM_THREADS='2') == 'BilinearSampler'


def test_it_is_used_on_one_thread_as_on_two(threaded):
    for threads in ('1', '2'):
        assert in_child(SAMPLER_NAME, OMP_NUM_THREADS=threads) == sampler.OP, threads


def test_an_exported_model_needs_only_mxnets_operators(threaded, tmp_path):
    """GluonModel.export writes BilinearSampler: the model loads where the library is not."""
    from stngluon import engine
    from stngluon.config import RunConfig
    model = engine.GluonModel(RunConfig(), (64, 1, 28, 28), mx.cpu())
    x = mx.nd.array(np.random.RandomState(0).rand(4, 1, 28, 28))
    expected = model.net(x).asnumpy()
    model.export(str(tmp_path / 'model'), 1)
    graph = json.load(open(tmp_path / 'model-symbol.json'))
    assert not {sampler.OP, sampler.OP_GRID_ONLY} & {node['op'] for node in graph['nodes']}
    np.save(tmp_path / 'x.npy', x.asnumpy())
    code = (f'from stngluon import compat; import numpy as np, mxnet as mx; '
            f'net = mx.gluon.SymbolBlock.imports({str(tmp_path / "model-symbol.json")!r}, '
            f'["data"], {str(tmp_path / "model-0001.params")!r}); '
            f'print(net(mx.nd.array(np.load({str(tmp_path / "x.npy")!r}))).asnumpy().tolist())')
    out = in_child(code, STN_OPS_LIBRARY=str(tmp_path / 'missing.so'))
    np.testing.assert_allclose(np.array(json.loads(out)), expected, rtol=1e-6, atol=1e-7)


@needs_mnist
def test_training_with_either_sampler_gives_the_same_run(threaded, tmp_path):
    """train.py on two threads: the same metrics and weights with the built-in sampler."""
    runs = {choice: brief_train_py(REAL_DIR, tmp_path / choice, STN_SAMPLER=choice)
            for choice in ('builtin', 'auto')}
    assert runs['builtin'][0] == 'BilinearSampler' and runs['auto'][0] == sampler.OP
    assert runs['builtin'][1] == runs['auto'][1]
    for name, value in runs['builtin'][2].items():
        assert np.array_equal(value.asnumpy(), runs['auto'][2][name].asnumpy()), name
