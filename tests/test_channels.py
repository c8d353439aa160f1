"""The CNN's convolutions on padded channels (net.PaddedChannels): the same parameters
and the same function as nn.Conv2D, forward and backward, for any block; train.py picks the
block from the CPU (runtime.channel_block), records it, and exports the plain network."""
import json

import numpy as np
import pytest

from stngluon import compat  # noqa: F401  (before mxnet)
import mxnet as mx
from mxnet import autograd

import net
import train
from stngluon import runtime
from test_mnist import REAL_DIR, needs_mnist
from test_precision import export_and_run_accuracy


def outputs_and_gradients(model, x):
    """The logits of ``model`` for x, and every parameter's gradient of their sum of squares."""
    with autograd.record():
        logits = model(x)
        loss = (logits ** 2).sum()
    loss.backward()
    grads = {name: p.grad().asnumpy() for name, p in model.collect_params().items()
             if p.grad_req != 'null'}
    return logits.asnumpy(), grads


def twins(block, side=28, **net_kwargs):
    """Net(channel_block=1) and Net(channel_block=block), hybridized, with the same weights."""
    nets = [net.Net(model='cnn', channel_block=b, **net_kwargs) for b in (1, block)]
    mx.random.seed(0)
    for n in nets:
        n.initialize(mx.init.Xavier(magnitude=2.24))
        n.hybridize(static_alloc=True, static_shape=True)
        n(mx.nd.zeros((2, 1, side, side)))
    for name, param in nets[0].collect_params().items():
        nets[1].collect_params()[name].set_data(param.data())
    return nets


@pytest.mark.parametrize('block', [8, 16, 32])
@pytest.mark.parametrize('width', [36, 37, 40, 48])
def test_padded_channels_compute_the_same_function_and_gradients(block, width):
    plain, padded = twins(block, width=width, transform='affine')
    assert {n: p.shape for n, p in plain.collect_params().items()} == \
        {n: p.shape for n, p in padded.collect_params().items()}
    x = mx.nd.random.uniform(shape=(8, 1, 28, 28))
    (y0, g0), (y1, g1) = outputs_and_gradients(plain, x), outputs_and_gradients(padded, x)
    assert np.allclose(y1, y0, rtol=1e-4, atol=1e-5)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert np.allclose(g1[name], g0[name], rtol=1e-3, atol=1e-5 * np.abs(g0[name]).max()), name


@pytest.mark.parametrize('net_kwargs', [{'transform': 'affine'}, {'transform': 'none'},
                                        {'transform': 'affine', 'transformers': 2}])
def test_a_seed_draws_the_same_initial_weights_at_any_block(net_kwargs):
    nets = []
    for block in (1, 16):
        mx.random.seed(3)
        model = net.Net(model='cnn', width=37, channel_block=block, **net_kwargs)
        model.initialize(mx.init.Xavier(magnitude=2.24))
        model.hybridize(static_alloc=True, static_shape=True)
        model(mx.nd.ones((2, 1, 28, 28)))
        nets.append(model)
    for name, param in nets[0].collect_params().items():
        assert np.array_equal(param.data().asnumpy(),
                              nets[1].collect_params()[name].data().asnumpy()), name


def test_two_transformers_side_by_side_feed_the_padded_classifier_two_channels():
    plain, padded = twins(16, width=37, transform='affine', transformers=2)
    x = mx.nd.random.uniform(shape=(4, 1, 28, 28))
    assert padded.classifier[0].weight.shape == (37, 2, 9, 9)
    assert np.allclose(padded(x).asnumpy(), plain(x).asnumpy(), rtol=1e-4, atol=1e-5)


def test_the_convolutions_compute_on_padded_channels_and_the_output_drops_them():
    width, block = 37, 16
    _, padded = twins(block, width=width, transform='none')
    graph = json.loads(padded(mx.sym.var('data')).tojson())
    filters = [int(node['attrs']['num_filter']) for node in graph['nodes']
               if node['op'] == 'Convolution']
    assert filters == [48, 80]   # 37 -> 48, 74 -> 80
    assert isinstance(padded.classifier[4], net.FirstChannels)
    assert padded.classifier[4].channels == 2 * width


def test_block_one_is_nn_conv2d_node_for_node():
    graph = net.cnn(10, 37)(mx.sym.var('data')).tojson()   # block 1, what Net() builds
    ops = [node['op'] for node in json.loads(graph)['nodes'] if node['op'] != 'null']
    assert ops == ['Convolution', 'Activation', 'Pooling', 'Convolution', 'Activation',
                   'Pooling', 'FullyConnected']


def test_a_transformer_at_conv1_sees_the_plain_channels():
    model = net.Net(model='cnn', transform='affine', places=('input', 'conv1'), width=37,
                    channel_block=16)
    assert not any(isinstance(layer, net.FirstChannels) for layer in model.classifier)
    model.initialize()
    model(mx.nd.zeros((1, 1, 28, 28)))
    assert model.feature_stn.localisation[0].weight.shape == (8, 37, 1, 1)


def test_the_block_follows_the_cpu_and_the_environment_wins(monkeypatch):
    monkeypatch.delenv(runtime.CHANNEL_BLOCK, raising=False)
    monkeypatch.setattr(runtime, 'cpu', lambda: ('some CPU', ['AVX2', 'AVX-512']))
    assert runtime.channel_block() == 16
    monkeypatch.setattr(runtime, 'cpu', lambda: ('some CPU', ['AVX2']))
    assert runtime.channel_block() == 8
    monkeypatch.setattr(runtime, 'cpu', lambda: ('some CPU', ['no AVX2']))
    assert runtime.channel_block() == 1
    monkeypatch.setenv(runtime.CHANNEL_BLOCK, '1')
    assert runtime.channel_block() == 1
    for bad in ('0', 'sixteen', '-8'):
        monkeypatch.setenv(runtime.CHANNEL_BLOCK, bad)
        with pytest.raises(SystemExit, match=runtime.CHANNEL_BLOCK):
            runtime.channel_block()


@needs_mnist
def test_a_run_records_its_block_and_exports_plain_convolutions_that_score_as_it_did(tmp_path,
                                                                                    capsys):
    train.main(['--data-dir', REAL_DIR, '--out', str(tmp_path), '--model', 'cnn', '--no-stn',
                '--precision', 'float32', '--train-size', '2000', '--epochs', '1'])
    config = json.load(open(tmp_path / 'config.json'))
    block = runtime.channel_block()
    assert config['execution']['channel_block'] == block
    assert (f'channels in {block}s' in capsys.readouterr().out) == (block > 1)
    graph = json.loads((tmp_path / 'model-symbol.json').read_text())
    assert [int(node['attrs']['num_filter']) for node in graph['nodes']
            if node['op'] == 'Convolution'] == [config['width'], 2 * config['width']]
    assert not any(node['op'] in ('slice_axis', 'Concat', 'broadcast_like')
                   for node in graph['nodes'])
    exported, trained = export_and_run_accuracy(tmp_path)
    assert exported == pytest.approx(trained, abs=0.002)


@pytest.mark.skipif(not runtime.bfloat16_native(), reason='bfloat16 needs a CPU with AVX-512 bf16')
def test_a_bfloat16_classifier_pads_in_float32_then_casts():
    plain, _ = twins(16, width=37, transform='none')
    bf16 = net.Net(model='cnn', transform='none', width=37, precision='bfloat16', channel_block=16)
    bf16.initialize()
    bf16.hybridize(static_alloc=True, static_shape=True)
    bf16(mx.nd.zeros((2, 1, 28, 28)))
    for name, param in plain.collect_params().items():
        bf16.collect_params()[name].set_data(param.data())
    x = mx.nd.random.uniform(shape=(8, 1, 28, 28))
    y0, y1 = plain(x).asnumpy(), bf16(x).asnumpy()
    assert y1.dtype == np.float32
    assert np.abs(y1 - y0).max() < 0.05 * np.abs(y0).max()
