"""The classifier's input standardisation in one pass (net.standardise, ops/standardise.cc):
the same bits as MXNet's _minus_scalar then _div_scalar forward and backward, the built-in
operators wherever the library is missing, and exported graphs holding MXNet's own
operators only (ops.portable)."""
import json
import os

import numpy as np
import pytest

from stngluon import compat  # noqa: F401
import mxnet as mx

import net
from stngluon import ops
from conftest import bits, in_child, output_and_gradient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('shape', [(64, 1, 42, 42), (5, 3, 7, 9), (300_001,)])
@pytest.mark.parametrize('mean, std', [*net.INPUT_NORMS.values(), (-3.7, 1e-3)])
def test_it_computes_the_bits_of_minus_scalar_then_div_scalar_forward_and_backward(
        op_library, shape, mean, std):
    """(300,001 elements: shared out among threads, with a tail.)"""
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.rand(*shape) * 4 - 1)
    head = mx.nd.array(rng.randn(*shape))
    expected = output_and_gradient(lambda a: (a - mean) / std, x, head)
    got = output_and_gradient(lambda a: mx.nd.stn_standardise(a, mean=mean, std=std), x, head)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def test_a_mean_or_std_that_is_not_a_number_is_refused(op_library):
    with pytest.raises(mx.MXNetError, match='mean and std must be numbers'):
        mx.nd.stn_standardise(mx.nd.ones((2, 2)), mean='grey', std=1).wait_to_read()


def graph_ops(block):
    return {node['op'] for node in json.loads(block._cached_graph[1].tojson())['nodes']}


NET_CODE = '''
import sys, json; sys.path.insert(0, {root!r})
from stngluon import compat, ops; import numpy as np, mxnet as mx; import net
n = net.Net(model='fcn', transform='none', width=16)
n.load_parameters({params!r}); n.hybridize()
y = n(mx.nd.array(np.load({x!r})))
print(json.dumps([ops.load(), sorted(node['op'] for node in
                  json.loads(n._cached_graph[1].tojson())['nodes']), y.asnumpy().tolist()]))
'''


def test_the_network_takes_it_where_the_library_loads_and_mxnets_operators_where_not(
        op_library, tmp_path):
    """The same network and weights, the same outputs bit for bit either way."""
    n = net.Net(model='fcn', transform='none', width=16)
    n.initialize(mx.init.Xavier())
    n.hybridize()
    x = mx.nd.array(np.random.RandomState(1).rand(4, 1, 28, 28))
    expected = n(x).asnumpy()
    assert 'stn_standardise' in graph_ops(n) and '_minus_scalar' not in graph_ops(n)
    n.save_parameters(str(tmp_path / 'net.params'))
    np.save(tmp_path / 'x.npy', x.asnumpy())
    code = NET_CODE.format(root=ROOT, params=str(tmp_path / 'net.params'),
                           x=str(tmp_path / 'x.npy'))
    loaded, graph, output = json.loads(in_child(code, STN_OPS_LIBRARY=str(tmp_path / 'no.so')))
    assert not loaded and {'_minus_scalar', '_div_scalar'} <= set(graph)
    assert not any(op.startswith('stn_') for op in graph)
    np.testing.assert_array_equal(np.array(output, dtype=np.float32), expected)


def test_portable_replaces_it_by_mxnets_two_operators_computing_the_same_bits(op_library):
    """In a graph with a node of several outputs before it (the row offsets move) and a
    node after it that reads it."""
    data = mx.sym.var('data')
    halves = mx.sym.split(data, num_outputs=2, axis=1)
    standardised = mx.sym.stn_standardise(halves[1], mean=net.MEAN, std=net.STD, name='norm')
    graph = mx.sym.Group([mx.sym.concat(halves[0], standardised, dim=1), halves[1] * 2])
    portable = mx.sym.load_json(ops.portable(graph.tojson()))
    nodes = json.loads(portable.tojson())['nodes']
    assert [n['op'] for n in nodes if n['op'] in ('_minus_scalar', '_div_scalar')] == [
        '_minus_scalar', '_div_scalar']
    assert not any(n['op'].startswith('stn_') for n in nodes)
    assert portable.list_outputs() == graph.list_outputs()
    x = mx.nd.array(np.random.RandomState(2).rand(3, 4, 5, 5))
    for got, expected in zip(portable.eval(data=x), graph.eval(data=x)):
        np.testing.assert_array_equal(bits(got), bits(expected))
