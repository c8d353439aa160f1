"""export_onnx.py: every transformer family, from either API, runs in ONNX Runtime as in
MXNet: the same logits and the same transformer output, zero padding and non-square
outputs included; a checked file; a clear error for what cannot be converted."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import onnx
import onnxruntime
import pytest
from mxnet.gluon import nn

from stngluon import onnx_export
import predict
from stngluon import rundir
import stn
from stngluon import symbolic
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = (20, 33)   # a non-square transformer output


class Probe(nn.HybridBlock):
    """A transformer of ``family`` with a TARGET output, then a 10-way classifier."""

    def __init__(self, family):
        super().__init__(prefix='net_')
        with self.name_scope():
            self.stn = stn.SpatialTransformer(target_shape=TARGET, transform=family, prefix='stn_')
            self.classifier = nn.Dense(10)

    def hybrid_forward(self, F, x):
        return self.classifier(self.stn(x)[0])


def far_reaching(family, rng):
    """A regressor bias whose transforms zoom out, shift and shear: much of every output
    reads from outside the input (zeros)."""
    theta = np.array(stn.identity_theta(family, 4), dtype=np.float32)
    if family == 'tps':
        return theta * 1.8 + rng.normal(0, 0.3, theta.shape)
    if family == 'attention':
        return np.array([1.6, 0.5, -0.4])
    if family == 'projective':
        return theta + np.r_[rng.normal(0, 0.4, 6), rng.normal(0, 0.3, 2)]
    if family == 'affine':
        return theta * 1.7 + np.r_[rng.normal(0, 0.3, 2), 0.6, rng.normal(0, 0.3, 2), -0.5]
    return theta * 1.8 + 0.6 + rng.normal(0, 0.2, theta.shape)   # a family added later: moved far


def gluon_export(tmp_path, family):
    """An exported Probe with random weights: (prefix, {batch: (logits, transformed)})."""
    mx.random.seed(1)
    rng = np.random.RandomState(1)
    block = Probe(family)
    block.initialize(mx.init.Xavier())
    block.hybridize()
    block(mx.nd.zeros((1, 1, 28, 28)))
    regressor = block.stn.regressor
    regressor.weight.set_data(mx.nd.array(rng.normal(0, 0.01, regressor.weight.shape)))
    regressor.bias.set_data(mx.nd.array(far_reaching(family, rng)))
    expected = {}
    for batch in (1, 7):
        x = mx.nd.array(rng.rand(batch, 1, 28, 28))
        expected[batch] = x.asnumpy(), block(x).asnumpy(), block.stn(x)[0].asnumpy()
    prefix = str(tmp_path / 'model')
    block.export(prefix)
    return prefix, expected


def symbol_export(tmp_path):
    """The symbolic API's network (sym.SpatialTransformer) with random weights."""
    rng = np.random.RandomState(2)
    symbol = symbolic.get_symbol(target_shape=TARGET, softmax=False)
    shapes, _, _ = symbol.infer_shape(data=(1, 1, 28, 28))
    weights = {name: mx.nd.array(rng.normal(0, 0.1, shape)) for name, shape
               in zip(symbol.list_arguments(), shapes) if name != 'data'}
    weights['net_stn_regressor_weight'][:] = 0
    weights['net_stn_regressor_bias'][:] = far_reaching('affine', rng)
    both = mx.sym.Group([symbol, symbol.get_internals()[rundir.SYMBOL_TRANSFORMED]])
    expected = {}
    for batch in (1, 7):
        x = rng.rand(batch, 1, 28, 28).astype(np.float32)
        out = both.eval(ctx=mx.cpu(), data=mx.nd.array(x), **weights)
        expected[batch] = x, out[0].asnumpy(), out[1].asnumpy()
    prefix = str(tmp_path / 'model')
    symbol.save(prefix + '-symbol.json')
    mx.nd.save(prefix + '-0000.params', {f'arg:{k}': v for k, v in weights.items()})
    return prefix, expected


@pytest.mark.parametrize('api, family', [('gluon', f) for f in stn.TRANSFORMS]
                         + [('symbol', 'affine')])
def test_onnx_runtime_gives_the_mxnet_logits_and_transformer_output(tmp_path, api, family):
    prefix, expected = gluon_export(tmp_path, family) if api == 'gluon' else symbol_export(tmp_path)
    path = onnx_export.export(prefix)
    assert path == str(tmp_path / rundir.ONNX)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['logits', 'transformed']
    for batch, (x, logits, transformed) in expected.items():   # one dynamic batch dimension
        got_logits, got_transformed = session.run(None, {'data': x})
        assert got_transformed.shape == (batch, 1, *TARGET)
        np.testing.assert_allclose(got_transformed, transformed, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_logits, logits, atol=1e-4, rtol=0)
        assert (transformed == 0).mean() > 0.1   # the transforms read outside the image


def test_parallel_transformers_export_their_outputs_side_by_side(tmp_path):
    import net
    rng = np.random.RandomState(3)
    two = net.Net(model='fcn', transform='affine', transformers=2, num_classes=19,
                  pool_after_stn=True)
    two.initialize(mx.init.Xavier())
    two.hybridize()
    two(mx.nd.zeros((1, 2, 42, 42)))
    for k, transformer in enumerate(two.stn.transformers):   # two different zooms
        transformer.regressor.bias.set_data(mx.nd.array(far_reaching('affine', rng)))
    x = rng.rand(5, 2, 42, 42).astype(np.float32)
    logits, (transformed, _) = two(mx.nd.array(x)).asnumpy(), two.stn(mx.nd.array(x))
    two.export(str(tmp_path / 'model'))
    session = onnxruntime.InferenceSession(onnx_export.export(str(tmp_path / 'model')))
    got_logits, got_transformed = session.run(None, {'data': x})
    assert got_logits.shape == (5, 19) and got_transformed.shape == (5, 4, 42, 42)
    np.testing.assert_allclose(got_transformed, transformed.asnumpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_logits, logits, atol=1e-4, rtol=0)


def test_a_network_without_a_transformer_exports_its_logits_only(tmp_path):
    block = nn.HybridSequential(prefix='net_')
    block.add(nn.Conv2D(4, 3), nn.Dense(10))
    block.initialize()
    block.hybridize()
    x = np.random.RandomState(0).rand(3, 1, 28, 28).astype(np.float32)
    logits = block(mx.nd.array(x)).asnumpy()
    block.export(str(tmp_path / 'model'))
    session = onnxruntime.InferenceSession(onnx_export.export(str(tmp_path / 'model')))
    assert [o.name for o in session.get_outputs()] == ['logits']
    np.testing.assert_allclose(session.run(None, {'data': x})[0], logits, atol=1e-4, rtol=0)


def test_an_operator_without_a_converter_is_named_in_a_clear_error(tmp_path):
    data = mx.sym.var('data')
    symbol = mx.sym.erf(mx.sym.FullyConnected(data, num_hidden=10, name='fc'))
    symbol.save(str(tmp_path / 'model-symbol.json'))
    mx.nd.save(str(tmp_path / 'model-0000.params'),
               {'arg:fc_weight': mx.nd.ones((10, 784)), 'arg:fc_bias': mx.nd.zeros(10)})
    with pytest.raises(onnx_export.ConversionError, match=r'model-symbol.json holds operators that '
                                                          r'cannot be converted to ONNX: erf'):
        onnx_export.export(str(tmp_path / 'model'))
    assert not (tmp_path / rundir.ONNX).exists()
    done = subprocess.run([sys.executable, 'export_onnx.py', '--model', str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith('error: ') and 'erf' in done.stderr


def test_predict_reports_a_missing_onnx_file_with_the_command_that_writes_it(tmp_path):
    with pytest.raises(predict.ModelError, match='export_onnx.py --model'):
        predict.load(str(tmp_path), loader='onnxruntime')


NO_MXNET = """import sys
sys.modules['mxnet'] = None   # any import of MXNet fails
import predict
predict.main(sys.argv[1:])
"""


@needs_mnist
def test_a_trained_run_scores_the_same_in_onnx_runtime_without_importing_mxnet(tmp_path):
    out = tmp_path / 'run'
    import train
    train.main(['--data-dir', REAL_DIR, '--out', str(out), '--train-size', '2000', '--epochs', '1',
                '--onnx'])
    assert (out / rundir.ONNX).exists()
    in_mxnet = subprocess.run([sys.executable, 'predict.py', '--model', str(out), '--dataset',
                               'mnist', '--data-dir', REAL_DIR], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    in_onnx = subprocess.run([sys.executable, '-c', NO_MXNET, '--model', str(out), '--runtime',
                              'onnxruntime', '--dataset', 'mnist', '--data-dir', REAL_DIR],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert in_onnx.returncode == 0, in_onnx.stderr
    assert in_onnx.stdout == in_mxnet.stdout and 'mnist test accuracy' in in_onnx.stdout
    assert rundir.read_metrics(str(out))[-1]['test_acc'] in in_onnx.stdout


def test_the_inference_benchmark_prints_a_row_per_batch_size(tmp_path, capsys):
    from benchmarks import bench_onnx
    prefix, _ = gluon_export(tmp_path, 'affine')
    onnx_export.export(prefix)
    bench_onnx.main(['--model', str(tmp_path), '--batch-sizes', '1,3', '--repeats', '1',
                     '--seconds', '0.05'])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith('host: ') and 'MXNet 1.9.1' in out[0]   # which machine it measured
    rows = [line.split() for line in out[3:]]
    assert [row[0] for row in rows] == ['1', '3']
    assert all(float(value.replace(',', '')) > 0 for row in rows for value in row[1:])


@needs_mnist
def test_a_resumed_run_rewrites_its_onnx_model_and_a_stale_one_is_refused(tmp_path):
    out = tmp_path / 'run'
    import train
    flags = ['--data-dir', REAL_DIR, '--out', str(out), '--train-size', '2000']
    train.main([*flags, '--epochs', '1', '--onnx'])
    first = (out / rundir.ONNX).read_bytes()
    train.main([*flags, '--epochs', '2', '--resume'])   # --onnx is the run's: kept
    score = [sys.executable, '-c', NO_MXNET, '--model', str(out), '--runtime', 'onnxruntime',
             '--dataset', 'mnist', '--data-dir', REAL_DIR]
    in_onnx = subprocess.run(score, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert in_onnx.returncode == 0, in_onnx.stderr
    assert rundir.read_metrics(str(out))[-1]['test_acc'] in in_onnx.stdout   # epoch 2's weights
    (out / rundir.ONNX).write_bytes(first)   # as an older copy would be
    stale = subprocess.run(score, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert stale.returncode == 1 and stale.stderr.strip() == (
        f"error: {out / rundir.ONNX} was made from model-0001.params, but the run's newest "
        f"export is model-0002.params (the run went on since): write it again with python "
        f"export_onnx.py --model {out}")


def two_channel_run(tmp_path, record=True):
    """An exported 19-way classifier of 2-channel 42x42 inputs (MNIST addition's shape)."""
    block = nn.HybridSequential(prefix='net_')
    with block.name_scope():
        block.add(nn.Conv2D(4, 3, strides=2), nn.Dense(19))
    block.initialize()
    block.hybridize()
    block(mx.nd.zeros((1, 2, 42, 42)))
    block.export(str(tmp_path / 'model'), epoch=1)
    if record:
        rundir.write_config(str(tmp_path), {'image_shape': [2, 42, 42]})
    return str(tmp_path)


@pytest.mark.parametrize('record', [True, False])
def test_the_input_shape_is_the_recorded_one_and_no_guess_is_printed(tmp_path, capsys, record):
    run = two_channel_run(tmp_path, record)
    onnx_export.export(run)
    assert predict.load(run)[1] == predict.load(run, loader='onnxruntime')[1] == (2, 42, 42)
    assert capsys.readouterr().out == ''


def test_image_files_for_a_two_channel_model_and_a_set_of_another_shape_are_one_line(
        tmp_path, capsys):
    from PIL import Image
    run = two_channel_run(tmp_path)
    onnx_export.export(run)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / 'digit.png')
    for runtime in ('mxnet', 'onnxruntime'):
        with pytest.raises(SystemExit) as error:
            predict.main([str(tmp_path / 'digit.png'), '--model', run, '--runtime', runtime])
        assert error.value.code == ('error: the model takes 2-channel 42x42 images (MNIST '
                                    'addition: one digit per channel), and an image file holds '
                                    'one: score it on its test set with --dataset addition')
        with pytest.raises(SystemExit) as error:
            predict.main(['--model', run, '--runtime', runtime, '--dataset', 'rts'])
        assert error.value.code == ('error: the model takes 2-channel 42x42 images but rts has '
                                    '42x42 images: pick the dataset it was trained on')
