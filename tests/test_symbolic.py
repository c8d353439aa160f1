"""The symbolic variant: sym.SpatialTransformer in the graph, identity start, lr_mult, and
equivalence with the Gluon network."""
import json

import mxnet as mx
import numpy as np
import pytest

from stngluon import symbolic
from net import Net
from stn import IDENTITY


def images(n=4, size=28, seed=0):
    return mx.nd.array(np.random.RandomState(seed).rand(n, 1, size, size).astype(np.float32))


def ops(symbol):
    return [node['op'] for node in json.loads(symbol.tojson())['nodes']]


def module(symbol, batch=4, size=28):
    mod = mx.mod.Module(symbol, context=mx.cpu())
    mod.bind(data_shapes=[('data', (batch, 1, size, size))],
             label_shapes=[('softmax_label', (batch,))])
    return mod


def test_the_transformer_is_in_the_graph_by_default_and_optional():
    assert 'SpatialTransformer' in ops(symbolic.get_symbol())
    assert 'SpatialTransformer' not in ops(symbolic.get_symbol(transform='none'))
    assert ops(symbolic.get_symbol())[-1] == 'SoftmaxOutput'


def test_the_localisation_layers_carry_the_lr_multiplier_as_a_symbol_attribute():
    attrs = symbolic.get_symbol(loc_lr_mult=0.1).attr_dict()
    for name in ['net_stn_loc_conv0_weight', 'net_stn_loc_dense0_bias', 'net_stn_regressor_weight']:
        assert attrs[name]['__lr_mult__'] == '0.1'
    assert '__lr_mult__' not in attrs.get('net_lenet_conv0_weight', {})


def regressor_bias_step(loc_lr_mult):
    """The change of the regressor bias after one SGD step of a Module."""
    mod = module(symbolic.get_symbol(loc_lr_mult=loc_lr_mult))
    mx.random.seed(0)
    mod.init_params(mx.init.Xavier(), arg_params=symbolic.identity_params(), allow_missing=True)
    # Start away from the identity's zero weights so the gradient reaches the bias.
    args, aux = mod.get_params()
    args['net_stn_regressor_weight'] = mx.nd.array(np.random.RandomState(1).randn(6, 32) * 0.01)
    mod.set_params(args, aux)
    mod.init_optimizer(optimizer='sgd', optimizer_params={'learning_rate': 0.1})
    batch = mx.io.DataBatch([images()], [mx.nd.array([1, 2, 3, 4])])
    mod.forward_backward(batch)
    mod.update()
    return mod.get_params()[0]['net_stn_regressor_bias'].asnumpy() - IDENTITY


def test_the_lr_multiplier_reaches_the_modules_optimizer():
    full, tenth = regressor_bias_step(1.0), regressor_bias_step(0.1)
    assert np.abs(full).max() > 1e-6
    np.testing.assert_allclose(tenth, 0.1 * full, rtol=1e-3, atol=1e-9)


def test_a_fresh_module_transformer_returns_its_input():
    symbol = symbolic.get_symbol()
    mod = mx.mod.Module(symbol.get_internals()['net_stn_transformer_output'], label_names=None)
    mod.bind(data_shapes=[('data', (4, 1, 28, 28))], for_training=False)
    mod.init_params(mx.init.Uniform(1.0), arg_params=symbolic.identity_params(), allow_missing=True)
    x = images()
    mod.forward(mx.io.DataBatch([x]), is_train=False)
    assert (mod.get_outputs()[0] - x).abs().max().asscalar() < 1e-5


@pytest.mark.parametrize('size', [28, 42])
def test_with_the_gluon_weights_both_apis_give_the_same_logits_and_transformer_output(size):
    net = Net()
    net.initialize(mx.init.Xavier())
    x = images(size=size)
    net(x)
    # A transformer away from the identity, so the comparison covers a real warp.
    net.stn.regressor.weight.set_data(mx.nd.array(np.random.RandomState(2).randn(6, 32) * 0.02))
    net.stn.regressor.bias.set_data(mx.nd.array([0.9, 0.1, 0.05, -0.1, 0.8, 0.0]))
    params = {p.name: p.data() for p in net.collect_params().values()}

    logits = symbolic.get_symbol(target_shape=(size, size), softmax=False)
    internals = logits.get_internals()
    both = mx.sym.Group([logits, internals['net_stn_transformer_output']])
    sym_logits, sym_out = both.eval(ctx=mx.cpu(), data=x, **params)

    gluon_out, _ = net.stn(x)
    np.testing.assert_allclose(sym_logits.asnumpy(), net(x).asnumpy(), atol=1e-5)
    np.testing.assert_allclose(sym_out.asnumpy(), gluon_out.asnumpy(), atol=1e-5)


def test_the_symbol_and_the_gluon_export_have_the_same_parameter_names(tmp_path):
    net = Net()
    net.initialize()
    net.hybridize()
    net(images())
    net.export(str(tmp_path / 'model'))
    exported = {k.split(':', 1)[1] for k in mx.nd.load(str(tmp_path / 'model-0000.params'))}
    symbol_args = set(symbolic.get_symbol().list_arguments()) - {'data', 'softmax_label'}
    assert exported == symbol_args
