"""predict.py: exported networks of either API, loaded without model code."""
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

import predict
from conftest import metrics
from net import Net
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exported(folder, transform='affine', size=28):
    mx.random.seed(0)
    net = Net(transform=transform)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, 1, size, size)))
    net.export(os.path.join(folder, 'model'), epoch=3)
    return net


@needs_mnist
@pytest.mark.parametrize('loader', ['gluon', 'module'])
def test_a_fresh_process_reproduces_the_accuracy_training_reported(quick_run, loader):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'predict.py'), '--model',
                             str(quick_run), '--loader', loader, '--dataset', 'mnist',
                             '--data-dir', REAL_DIR], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    reported = float(metrics(quick_run)[-1]['test_acc'])
    assert f'mnist test accuracy: {reported:.4f}' in result.stdout


@pytest.mark.parametrize('loader', ['gluon', 'module'])
def test_both_loaders_give_the_networks_own_probabilities(tmp_path, loader):
    net = exported(tmp_path, size=42)
    x = np.random.RandomState(0).rand(5, 1, 42, 42).astype(np.float32)
    probabilities, shape = predict.load(str(tmp_path), loader=loader)
    assert shape == (1, 42, 42)
    np.testing.assert_allclose(probabilities(x), mx.nd.softmax(net(mx.nd.array(x))).asnumpy(),
                               atol=1e-5)


def test_image_files_are_read_as_white_digits_on_black_at_the_input_size(tmp_path):
    digit = np.zeros((28, 28), np.float32)
    digit[6:22, 12:16] = 1.0  # a '1'
    exact = tmp_path / 'one.png'
    Image.fromarray((digit * 255).astype(np.uint8)).save(exact)
    np.testing.assert_allclose(predict.read_image(str(exact), (1, 28, 28))[0], digit, atol=1 / 255)
    # Black ink on white paper, three times larger, as a JPEG: inverted and resized.
    paper = Image.fromarray(((1 - digit) * 255).astype(np.uint8)).resize((84, 84), Image.NEAREST)
    paper.save(tmp_path / 'one.jpg', quality=95)
    back = predict.read_image(str(tmp_path / 'one.jpg'), (1, 28, 28))[0]
    assert back.shape == (28, 28) and np.abs(back - digit).mean() < 0.05


def test_the_cli_classifies_image_files(tmp_path, capsys):
    exported(tmp_path)
    Image.fromarray(np.zeros((50, 40), np.uint8)).save(tmp_path / 'blank.png')
    predict.main(['--model', str(tmp_path), str(tmp_path / 'blank.png')])
    out = capsys.readouterr().out
    assert out.startswith(f'{tmp_path / "blank.png"}: ') and '(p = ' in out


@pytest.mark.parametrize('damage, message', [
    ('no-params', 'model-NNNN.params not found'),
    ('no-symbol', 'model-symbol.json not found'),
    ('corrupt-params', 'is corrupt or not an MXNet parameter file'),
    ('other-network', 'does not match'),
])
def test_missing_corrupt_or_mismatched_files_are_clear_errors(tmp_path, damage, message):
    exported(tmp_path)
    params = tmp_path / 'model-0003.params'
    if damage == 'no-params':
        params.unlink()
    elif damage == 'no-symbol':
        (tmp_path / 'model-symbol.json').unlink()
    elif damage == 'corrupt-params':
        params.write_bytes(params.read_bytes()[:100])
    else:
        other = tmp_path / 'lenet'
        other.mkdir()
        exported(other, transform='none')
        shutil.copy(other / 'model-0003.params', params)
    with pytest.raises(SystemExit) as error:
        predict.main(['--model', str(tmp_path), '--dataset', 'mnist'])
    assert message in str(error.value)


def test_an_unreadable_image_is_a_clear_error(tmp_path):
    exported(tmp_path)
    (tmp_path / 'notes.png').write_text('not an image')
    with pytest.raises(SystemExit, match='notes.png: not a readable image'):
        predict.main(['--model', str(tmp_path), str(tmp_path / 'notes.png')])


def test_a_dataset_of_another_size_is_a_clear_error(tmp_path):
    exported(tmp_path)
    with pytest.raises(SystemExit, match='takes 28x28 images but rts has 42x42'):
        predict.main(['--model', str(tmp_path), '--dataset', 'rts'])


def test_nothing_to_do_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        predict.main(['--model', str(tmp_path)])
    assert error.value.code == 2 and '--dataset' in capsys.readouterr().err


def test_a_symbol_file_that_holds_no_network_is_an_error_not_a_crash(tmp_path):
    exported(tmp_path)
    (tmp_path / 'model-symbol.json').write_text('{}')   # MXNet itself segfaults on this
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'predict.py'), '--model',
                             str(tmp_path), '--dataset', 'mnist'], capture_output=True, text=True)
    assert result.returncode == 1 and 'model-symbol.json is not an exported network' in result.stderr


@pytest.mark.parametrize('side', [40, 100])   # above the limit; above twice it (Pillow's own error)
def test_an_image_above_the_pixel_limit_is_a_clear_error(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    Image.fromarray(np.zeros((side, side), np.uint8)).save(tmp_path / 'huge.png')
    with pytest.raises(predict.ModelError, match=r'huge.png: too large .* at most 1,000 pixels'):
        predict.read_image(str(tmp_path / 'huge.png'), (1, 28, 28))


@pytest.mark.parametrize('ink', [0, 255], ids=['black-ink', 'white-ink'])
def test_a_digit_drawn_only_in_the_alpha_channel_is_read_as_that_digit(tmp_path, ink):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255                                   # a '1'
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = ink, digit                   # transparent but for the stroke
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'one.png')
    np.testing.assert_allclose(predict.read_image(str(tmp_path / 'one.png'), (1, 28, 28))[0],
                               digit / 255, atol=1 / 255)
