"""The FCN's first layer on the input image (net.InputDense, ops/dense.cc): FullyConnected's
function and parameters, forward and for the weights, in each instruction set's loops and
at any thread count the same bits; the input gets no gradient; the network takes it only
where runtime.py chose it (STN_INPUT_DENSE) and the library loads; exported graphs hold
FullyConnected (ops.portable)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stngluon import compat  # noqa: F401
import mxnet as mx

import net
from stngluon import ops, runtime

from conftest import in_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (input shape, units): the RTS FCN's first layer; sizes that fill no tile or vector
SHAPES = [((64, 1, 42, 42), 106), ((5, 3, 7), 9), ((33, 784), 157), ((2, 1, 60, 60), 68)]


def layer(op, x, weight, bias, head, **attrs):
    """op's output and the weight's and bias's gradients for the output's gradient ``head``."""
    weight, bias = weight.copy(), bias.copy()
    weight.attach_grad()
    bias.attach_grad()
    with mx.autograd.record():
        y = op(x, weight, bias, num_hidden=weight.shape[0], **attrs)
    y.backward(head)
    return y.asnumpy(), weight.grad.asnumpy(), bias.grad.asnumpy()


def arrays(shape, units, seed=0):
    rng = np.random.RandomState(seed)
    features = int(np.prod(shape[1:]))
    return [mx.nd.array(a) for a in (rng.rand(*shape), rng.randn(units, features) * 0.05,
                                     rng.randn(units), rng.randn(shape[0], units))]


def dense_relu(x, weight, bias, num_hidden):
    return mx.nd.relu(mx.nd.FullyConnected(x, weight, bias, num_hidden=num_hidden))


@pytest.mark.parametrize('shape, units', SHAPES)
@pytest.mark.parametrize('relu', [False, True])
def test_it_computes_what_fully_connected_computes_forward_and_for_the_weights(
        op_library, shape, units, relu):
    """With its ReLU (act_type=relu), what FullyConnected then relu compute."""
    x, weight, bias, head = arrays(shape, units)
    ours = layer(mx.nd.stn_input_dense, x, weight, bias, head, **(
        {'act_type': 'relu'} if relu else {}))
    builtin = layer(dense_relu if relu else mx.nd.FullyConnected, x, weight, bias, head)
    assert not relu or 0 < (ours[0] == 0).mean() < 1   # some units cut
    for got, expected in zip(ours, builtin):   # sums of up to 3,600 products, in another order
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * abs(expected).max())


LOOPS_CODE = '''
import sys, json; sys.path.insert(0, {root!r})
from stngluon import compat, ops; import numpy as np, mxnet as mx
assert ops.load()
from test_dense import SHAPES, arrays, layer
out = []
for shape, units in SHAPES:
    x, weight, bias, head = arrays(shape, units)
    ours = layer(mx.nd.stn_input_dense, x, weight, bias, head)
    builtin = layer(mx.nd.FullyConnected, x, weight, bias, head)
    out.append([float(abs(a - b).max() / abs(b).max()) for a, b in zip(ours, builtin)])
    out.append([a.view(np.int32).tolist()[:50] for a in ours])
print(json.dumps(out))
'''


def run_loops(**env):
    code = LOOPS_CODE.format(root=os.path.join(ROOT, 'tests'))
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT, **env))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('isa', ['avx2', 'plain'])
def test_each_instruction_sets_loops_compute_the_same_function(op_library, isa):
    """The AVX2 and plain x86-64 loops, which this CPU would not pick (STN_DENSE_ISA)."""
    if isa == 'avx2' and 'AVX2' not in runtime.cpu()[1]:
        pytest.skip('this CPU has no AVX2')
    results = run_loops(STN_DENSE_ISA=isa)
    for errors in results[::2]:   # output, weight's gradient, bias's: relative to the largest
        assert max(errors) < 1e-5


def test_any_thread_count_gives_the_same_bits(op_library):
    """Each output element is summed whole by one thread (the first shape is large enough to
    be shared among threads)."""
    assert run_loops(OMP_NUM_THREADS='1')[1::2] == run_loops(OMP_NUM_THREADS='2')[1::2]


def test_a_weight_that_does_not_fit_the_input_or_an_unknown_activation_is_refused(op_library):
    x, weight, bias, _ = arrays((4, 10), 3)
    with pytest.raises(mx.base.MXNetError, match='the weight takes 10 inputs, x has 12'):
        mx.nd.stn_input_dense(mx.nd.ones((4, 12)), weight, bias, num_hidden=3).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match='num_hidden must be a whole number'):
        mx.nd.stn_input_dense(x, weight, bias, num_hidden=0).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match='act_type must be relu'):
        mx.nd.stn_input_dense(x, weight, bias, num_hidden=3, act_type='tanh').wait_to_read()


def graph_ops(block):
    return [node['op'] for node in json.loads(block._cached_graph[1].tojson())['nodes']]


def fcn(transform='none', precision='float32'):
    n = net.Net(model='fcn', transform=transform, width=16, precision=precision)
    n.initialize(mx.init.Xavier())
    n.hybridize()
    return n


@pytest.mark.parametrize('choice, operator', [('library', 'stn_input_dense'),
                                              ('builtin', 'FullyConnected'),
                                              (None, 'FullyConnected')])
def test_the_fcn_takes_it_where_chosen_and_the_library_loads(op_library, monkeypatch, choice,
                                                             operator):
    """The same parameters (names, shapes), the same outputs to float tolerance, and no
    gradient for the input, whichever computes the layer."""
    monkeypatch.delenv(runtime.DENSE, raising=False)
    reference = fcn()
    x = mx.nd.array(np.random.RandomState(1).rand(4, 1, 42, 42))
    expected = reference(x).asnumpy()
    if choice:
        monkeypatch.setenv(runtime.DENSE, choice)
    n = fcn()
    n(x)
    assert n.input_dense == operator
    assert graph_ops(n).count('FullyConnected') == (2 if operator == 'stn_input_dense' else 3)
    assert sorted(n.collect_params()) == sorted(reference.collect_params())
    for name, param in n.collect_params().items():
        param.set_data(reference.collect_params()[name].data())
    x.attach_grad()
    with mx.autograd.record():
        y = n(x)
    y.backward()
    np.testing.assert_allclose(y.asnumpy(), expected, rtol=1e-5, atol=1e-6)
    assert not x.grad.asnumpy().any()


def test_a_network_whose_first_layer_reads_a_transformers_output_never_takes_it(
        op_library, monkeypatch):
    """The ST-FCN's classifier (its input needs a gradient), and the FCN in bfloat16."""
    monkeypatch.setenv(runtime.DENSE, 'library')
    for n in [fcn('affine')] + ([fcn(precision='bfloat16')] if net.BFLOAT16 else []):
        n(mx.nd.zeros((2, 1, 42, 42)))
        assert n.input_dense is None and 'stn_input_dense' not in graph_ops(n)


def test_without_the_library_the_choice_falls_back_to_fully_connected(tmp_path):
    code = (f'import sys; sys.path.insert(0, {ROOT!r}); from stngluon import compat, ops; '
            f'import mxnet as mx, net; n = net.Net(model="fcn", transform="none", width=8); '
            f'n.initialize(); n(mx.nd.zeros((1, 1, 28, 28))); print(ops.load(), n.input_dense)')
    assert in_child(code, STN_INPUT_DENSE='library',
                    STN_OPS_LIBRARY=str(tmp_path / 'no.so')).split() == ['False', 'FullyConnected']


def test_portable_exports_it_as_fully_connected(op_library, monkeypatch):
    monkeypatch.setenv(runtime.DENSE, 'library')
    n = fcn()
    x = mx.nd.array(np.random.RandomState(3).rand(3, 1, 42, 42))
    expected = n(x).asnumpy()
    graph = n._cached_graph[1]
    portable = mx.sym.load_json(ops.portable(graph.tojson()))
    nodes = json.loads(portable.tojson())['nodes']
    assert not any(node['op'].startswith('stn_input') for node in nodes)
    first = [k for k, node in enumerate(nodes) if node['op'] == 'FullyConnected'][0]
    assert nodes[first]['attrs'] == {'num_hidden': '16', 'no_bias': 'False', 'flatten': 'True'}
    assert nodes[first + 1]['op'] == 'Activation'   # its ReLU
    assert nodes[first + 1]['inputs'] == [[first, 0, 0]]
    params = {p.name: p.data() for p in n.collect_params().values()}
    inputs = {portable.list_arguments()[0]: x, **params}
    got = portable.eval(**{k: v for k, v in inputs.items() if k in portable.list_arguments()})
    np.testing.assert_allclose(got[0].asnumpy(), expected, rtol=1e-5, atol=1e-6)
