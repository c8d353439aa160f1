"""train.py --precision bfloat16: the classifier's convolutions and dense layers compute in
bfloat16 while its weights, their gradients and the transformer stay float32, and what a
run writes (its checkpoints and its export) is a float32 network's."""
import json

import numpy as np
import pytest

from stngluon import compat  # noqa: F401  (before mxnet)
import mxnet as mx
from mxnet import autograd, gluon

import net
import train
from stngluon import mnist, runtime
from stngluon.config import ConfigError, RunConfig
from test_mnist import REAL_DIR, needs_mnist

native = pytest.mark.skipif(not runtime.bfloat16_native(),
                            reason='bfloat16 needs a CPU with AVX-512 bf16')


def pair(model, transform='affine'):
    """The float32 and the bfloat16 network, with the same weights, for 28x28 inputs."""
    nets = [net.Net(model=model, transform=transform, precision=p) for p in ('float32', 'bfloat16')]
    mx.random.seed(0)
    nets[0].initialize(mx.init.Xavier())
    nets[0](mx.nd.zeros((1, 1, 28, 28)))
    nets[1].initialize()
    nets[1](mx.nd.zeros((1, 1, 28, 28)))
    for name, param in nets[0].collect_params().items():
        nets[1].collect_params()[name].set_data(param.data())
    return nets


@pytest.mark.parametrize('model', net.MODELS)
def test_a_bfloat16_network_has_the_float32_networks_parameters(model):
    float32, bfloat16 = (net.Net(model=model, precision=p) for p in ('float32', 'bfloat16'))
    assert list(bfloat16.collect_params()) == list(float32.collect_params())
    assert {np.dtype(p.dtype) for p in bfloat16.collect_params().values()} == {np.dtype(np.float32)}


@native
@pytest.mark.parametrize('model', ['cnn', 'fcn'])
def test_the_classifier_computes_in_bfloat16_and_its_gradients_are_float32(model):
    float32, bfloat16 = pair(model)
    x = mx.nd.random.uniform(shape=(16, 1, 28, 28))
    y = mx.nd.array(np.arange(16) % 10)
    outputs, grads = [], []
    for network in (float32, bfloat16):
        with autograd.record():
            logits = network(x)
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(logits, y)
        loss.backward()
        outputs.append(logits.asnumpy())
        grads.append({k: p.grad().asnumpy() for k, p in network.collect_params().items()})
    assert not np.array_equal(*outputs)   # it is computed in bfloat16, close to float32
    # to the 8 bits of its mantissa
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=0.05, atol=0.05)
    for name, grad in grads[1].items():
        assert grad.dtype == np.float32, name
        norms = np.linalg.norm(grad) * np.linalg.norm(grads[0][name])
        cosine = (grad * grads[0][name]).sum() / (norms + 1e-30)
        assert cosine > 0.99 or not grads[0][name].any(), (name, cosine)


@native
@needs_mnist
def test_a_bfloat16_run_exports_a_float32_network_that_scores_as_it_did(tmp_path):
    train.main(['--data-dir', REAL_DIR, '--out', str(tmp_path), '--model', 'cnn', '--no-stn',
                '--precision', 'bfloat16', '--train-size', '2000', '--epochs', '1'])
    assert json.load(open(tmp_path / 'config.json'))['precision'] == 'bfloat16'
    graph = (tmp_path / 'model-symbol.json').read_text()
    assert 'amp_cast' not in graph and 'Convolution' in graph
    exported, trained = export_and_run_accuracy(tmp_path)
    assert exported == pytest.approx(trained, abs=0.005)   # float32 against bfloat16


@needs_mnist
@pytest.mark.parametrize('isa, precision', [(['AVX-512', 'AVX-512 bf16'], 'bfloat16'),
                                            (['AVX2'], 'float32')])
def test_by_default_a_cnn_baseline_trains_in_bfloat16_where_the_cpu_has_it(
        tmp_path, monkeypatch, capsys, isa, precision):
    """--precision auto (config.auto_precision), recorded in config.json and said in the
    header; --resume keeps the recorded precision, whatever auto would choose then."""
    if precision == 'bfloat16' and not runtime.bfloat16_native():
        pytest.skip('bfloat16 needs a CPU with AVX-512 bf16')
    monkeypatch.setattr(runtime, 'cpu', lambda: ('A CPU', isa))
    monkeypatch.setenv(runtime.CHANNEL_BLOCK, '1')
    flags = ['--data-dir', REAL_DIR, '--out', str(tmp_path), '--model', 'cnn', '--no-stn',
             '--train-size', '256']
    train.main(flags + ['--epochs', '1'])
    assert json.load(open(tmp_path / 'config.json'))['precision'] == precision
    header = capsys.readouterr().out
    assert ('bfloat16 classifier (--precision auto on this CPU)' in header) == (precision == 'bfloat16')
    monkeypatch.setattr(runtime, 'cpu', lambda: ('A CPU', ['AVX-512', 'AVX-512 bf16']))
    train.main(flags + ['--epochs', '2', '--resume'])
    assert json.load(open(tmp_path / 'config.json'))['precision'] == precision


def export_and_run_accuracy(out):
    """(the accuracy of the run in ``out``'s export, SymbolBlock.imports, on MNIST's test
    set; the test accuracy its last metrics.csv row gives)."""
    exported = gluon.SymbolBlock.imports(str(out / 'model-symbol.json'), ['data'],
                                         str(out / 'model-0001.params'))
    _, _, x, y = mnist.load_mnist(REAL_DIR, allow_download=False)
    accuracy = np.mean(np.concatenate([exported(mx.nd.array(x[i:i + 1000])).asnumpy().argmax(1)
                                       for i in range(0, len(x), 1000)]) == y)
    return accuracy, float(open(out / 'metrics.csv').read().splitlines()[-1].split(',')[4])


def test_bfloat16_on_a_cpu_without_it_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, 'cpu', lambda: ('An older CPU', ['AVX2']))
    with pytest.raises(SystemExit, match='needs a CPU with AVX-512 bf16.*An older CPU, has '
                                         'AVX2: train with --precision float32'):
        train.main(['--precision', 'bfloat16', '--out', str(tmp_path / 'run'),
                    '--data-dir', str(tmp_path / 'none')])


def test_the_symbolic_api_trains_in_float32_only():
    with pytest.raises(ConfigError, match='--precision: --api symbol trains in float32'):
        RunConfig(api='symbol', precision='bfloat16')
