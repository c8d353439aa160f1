"""2x2 average pooling in one pass (net.AvgPool2x2, ops/avg_pool.cc): the same bits as
nn.AvgPool2D(2, 2)'s Pooling forward and backward, Pooling wherever the library is missing,
and exported graphs holding Pooling itself (ops.portable)."""
import json
import os

import numpy as np
import pytest

from stngluon import compat  # noqa: F401
import mxnet as mx
from mxnet.gluon import nn

import net
from stngluon import ops
from conftest import bits, in_child, output_and_gradient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('shape', [(64, 1, 42, 42), (256, 1, 60, 60), (3, 2, 7, 5), (1, 1, 2, 3)])
def test_it_computes_the_bits_of_avgpool2d_forward_and_backward(op_library, shape):
    """Values of every magnitude, so that the order of the window's sum shows; odd sides,
    whose last row or column the window leaves out and gives no gradient."""
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.randn(*shape) * rng.choice([1e-3, 1.0, 1e3], size=shape))
    head = mx.nd.array(rng.randn(*shape[:2], shape[2] // 2, shape[3] // 2))
    builtin = nn.AvgPool2D(2, 2)
    expected = output_and_gradient(builtin, x, head)
    got = output_and_gradient(mx.nd.stn_avg_pool2, x, head)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize('shape', [(4, 1, 1, 8), (4, 42, 42)])
def test_an_input_that_is_not_nchw_with_sides_of_two_or_more_is_refused(op_library, shape):
    with pytest.raises(mx.MXNetError, match=r'must be \(N, C, H, W\) with H and W at least 2'):
        mx.nd.stn_avg_pool2(mx.nd.ones(shape)).wait_to_read()


def graph_ops(block):
    return {node['op'] for node in json.loads(block._cached_graph[1].tojson())['nodes']}


NET_CODE = '''
import sys, json; sys.path.insert(0, {root!r})
from stngluon import compat, ops; import numpy as np, mxnet as mx; import net
n = net.Net(model='cnn', transform='affine', width=8, pool_after_stn=True)
n.load_parameters({params!r}); n.hybridize()
x = mx.nd.array(np.load({x!r}))
with mx.autograd.record():
    y = n(x)
y.backward()
print(json.dumps([ops.load(), sorted(node['op'] for node in
                  json.loads(n._cached_graph[1].tojson())['nodes']), y.asnumpy().tolist(),
                  [p.grad().asnumpy().ravel().tolist() for _, p in sorted(n.collect_params().items())]]))
'''


def test_the_network_takes_it_where_the_library_loads_and_pooling_where_not(op_library, tmp_path):
    """An ST-CNN pools twice (its localisation's input, the transformer's output): the same
    outputs and weight gradients bit for bit either way."""
    n = net.Net(model='cnn', transform='affine', width=8, pool_after_stn=True)
    n.initialize(mx.init.Xavier())
    n.hybridize()
    x = mx.nd.array(np.random.RandomState(1).rand(4, 1, 42, 42))
    with mx.autograd.record():
        y = n(x)
    y.backward()
    assert 'stn_avg_pool2' in graph_ops(n) and 'Pooling' in graph_ops(n)   # the max pools stay
    n.save_parameters(str(tmp_path / 'net.params'))
    np.save(tmp_path / 'x.npy', x.asnumpy())
    code = NET_CODE.format(root=ROOT, params=str(tmp_path / 'net.params'),
                           x=str(tmp_path / 'x.npy'))
    loaded, graph, output, gradients = json.loads(in_child(code, STN_OPS_LIBRARY=str(tmp_path / 'no.so')))
    assert not loaded and not any(op.startswith('stn_') for op in graph)
    np.testing.assert_array_equal(np.array(output, dtype=np.float32), y.asnumpy())
    for (name, p), gradient in zip(sorted(n.collect_params().items()), gradients, strict=True):
        np.testing.assert_array_equal(np.array(gradient, dtype=np.float32),
                                      p.grad().asnumpy().ravel(), err_msg=name)


def test_portable_names_it_as_avgpool2ds_pooling_node(op_library):
    """The node nn.AvgPool2D(2, 2) would have made, attributes and name, computing the
    same bits."""
    data = mx.sym.var('data')
    pooled = net.AvgPool2x2()(data)
    builtin = nn.AvgPool2D(2, 2, prefix=pooled.name[:-len('fwd')])(data)
    portable = json.loads(ops.portable(pooled.tojson()))
    assert portable['nodes'] == json.loads(builtin.tojson())['nodes']
    x = mx.nd.array(np.random.RandomState(2).rand(3, 1, 42, 42))
    got = mx.sym.load_json(json.dumps(portable)).eval(data=x)[0]
    np.testing.assert_array_equal(bits(got), bits(pooled.eval(data=x)[0]))
