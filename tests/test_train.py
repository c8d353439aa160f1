"""train.py: the command line, the schedule, and short real runs when MNIST is available."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from stngluon import rundir
import train
from conftest import QUICK, metrics
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('flags, message', [
    (['--epochs', '0'], "--epochs: '0' must be a finite number > 0"),
    (['--batch-size', '-3'], "--batch-size: '-3' must be a finite number > 0"),
    (['--batch-size', 'many'], "--batch-size: 'many' is not a int"),
    (['--lr', 'nan'], "--lr: 'nan' must be a finite number > 0"),
    (['--lr', '-0.1'], "--lr: '-0.1' must be a finite number > 0"),
    (['--optimizer', 'rmsprop'], "--optimizer: invalid choice: 'rmsprop'"),
    (['--ctx', '7'], 'GPU 7 requested but this MXNet sees 0 GPU(s)'),
    (['--ctx', 'tpu'], "--ctx: 'tpu': use cpu, a GPU id such as 0"),
    (['--lr-steps', '16,12'], "--lr-steps: '16,12': epochs must be >= 1 and increasing"),
    (['--momentum', '1.5'], '--momentum: 1.5 must be in [0, 1)'),
    (['--dataset', 'svhn'], "--dataset: invalid choice: 'svhn'"),
    (['--model', 'vgg'], "--model: invalid choice: 'vgg'"),
    (['--transform', 'similarity'], "--transform: invalid choice: 'similarity'"),
    (['--no-stn', '--transform', 'tps'], '--transform: not allowed with argument --no-stn'),
    (['--lr-mode', 'poly'], "--lr-mode: invalid choice: 'poly'"),
    (['--warmup-epochs', '-1'], '--warmup-epochs: -1.0 must be >= 0 and below --epochs'),
    (['--warmup-epochs', '5', '--epochs', '5'], '--warmup-epochs: 5.0 must be >= 0 and below'),
    (['--api', 'symbol', '--model', 'cnn'], 'symbol builds only --model lenet with --transform '
                                            'affine or none'),
    (['--api', 'symbol', '--transform', 'tps'], 'symbol builds only --model lenet'),
    (['--width', '64'], '--width: only for --model fcn or cnn'),
    (['--model', 'fcn', '--width', '64', '--budget-mult', '2'], '--budget-mult: sets the width'),
    (['--budget-mult', '0'], "--budget-mult: '0' must be"),
    (['--transform', 'tps', '--tps-grid', '1'], '--tps-grid: 1 must be >= 2'),
    (['--api', 'symbol', '--ctx', 'cpu,cpu'], '--ctx: --api symbol trains on one device'),
    (['--ctx', 'cpu,gpu'], "--ctx: 'cpu,gpu': use cpu, a GPU id such as 0, or a comma"),
    (['--kvstore', 'dist_async'], "--kvstore: invalid choice: 'dist_async'"),
])
def test_the_cli_rejects_bad_values(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(flags)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_are_the_documented_recipe():
    config, opts = train.parse_args([])
    assert (config.epochs, config.batch_size, config.optimizer, config.lr) == (20, 64, 'adam', 0.001)
    assert (config.lr_steps, config.loc_lr_mult, opts.out) == ([12, 16], 0.1, 'result')




def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=f'no checkpoint.json in {tmp_path}'):
        train.main(['--resume', '--out', str(tmp_path)])


def test_missing_data_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(train.mnist, 'MIRRORS', ['http://127.0.0.1:9/'])
    with pytest.raises(SystemExit, match='could not be downloaded'):
        train.main(['--data-dir', str(tmp_path / 'none'), '--out', str(tmp_path / 'run')])


# ---- short real runs ------------------------------------------------------------------

def run(out, *flags):
    train.main(['--data-dir', REAL_DIR, '--out', str(out), *QUICK, *flags])


@needs_mnist
def test_a_short_run_learns_and_writes_its_files(quick_run):
    rows = metrics(quick_run)
    assert [row['epoch'] for row in rows] == ['1', '2']
    assert set(rundir.METRICS) <= set(rows[0])
    # 2 epochs on 5,000 images; the full recipe is in the README.
    assert float(rows[-1]['test_acc']) >= 0.90
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    config = json.load(open(quick_run / 'config.json'))
    assert config['train_size'] == 5000 and config['dataset'] == 'mnist'
    assert config['transform'] == 'affine' and 'no_stn' not in config   # one field
    assert rows[0]['dataset'] == 'mnist'
    for name in ['model-symbol.json', 'model-0002.params', 'checkpoint.json',
                 'checkpoint-0002.params', 'checkpoint-0002.states', 'compare.jpg']:
        assert (quick_run / name).is_file(), name
    assert not (quick_run / 'checkpoint-0001.params').exists()  # older checkpoints are pruned


@needs_mnist
def test_the_export_loads_in_a_fresh_process_without_project_code(quick_run):
    script = textwrap.dedent(f'''
        import gzip, os, numpy as np
        if not hasattr(np, 'bool'): np.bool = bool   # numpy >= 1.24 (Python 3.12): see stngluon/compat.py
        import mxnet as mx
        from mxnet import gluon
        def idx(name):
            path = os.path.join({REAL_DIR!r}, name)
            raw = gzip.open(path + '.gz').read() if os.path.exists(path + '.gz') else open(path, 'rb').read()
            return np.frombuffer(raw, np.uint8, offset=16 if 'images' in name else 8)
        x = idx('t10k-images-idx3-ubyte').reshape(-1, 1, 28, 28).astype(np.float32) / 255
        y = idx('t10k-labels-idx1-ubyte')
        net = gluon.SymbolBlock.imports({str(quick_run / 'model-symbol.json')!r}, ['data'],
                                        {str(quick_run / 'model-0002.params')!r})
        pred = np.concatenate([net(mx.nd.array(x[i:i + 1000])).asnumpy().argmax(1)
                               for i in range(0, 10000, 1000)])
        print((pred == y).mean())
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            cwd='/', env=dict(os.environ, PYTHONPATH=''))
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) == pytest.approx(float(metrics(quick_run)[-1]['test_acc']),
                                                             abs=1e-4)


@needs_mnist
def test_a_resumed_run_repeats_the_uninterrupted_one_exactly(quick_run, tmp_path):
    api = json.load(open(quick_run / 'config.json'))['api']
    run(tmp_path, '--epochs', '1', '--api', api)
    run(tmp_path, '--resume')
    same = ['epoch', 'train_loss', 'test_loss', 'test_acc', 'lr']
    assert [{k: r[k] for k in same} for r in metrics(tmp_path)] == \
           [{k: r[k] for k in same} for r in metrics(quick_run)]


@needs_mnist
def test_a_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match=r'training loss became (nan|inf).*checkpoint \(epoch 0\)'):
        run(tmp_path, '--optimizer', 'sgd', '--lr', '1e6')
    assert json.load(open(tmp_path / 'checkpoint.json')) == {'epoch': 0}
    assert metrics(tmp_path) == []


def test_a_transformer_that_has_left_the_input_is_reported_once():
    on = np.zeros((4, 2, 6, 6))                                      # the centre of the input
    off = np.full((4, 2, 6, 6), 3.0)                                 # beyond its right and bottom
    warned = set()
    assert train.lost_transformers(np.concatenate([on, on], 1), 1, warned) == []
    first = train.lost_transformers(np.concatenate([on, off], 1), 2, warned)
    assert len(first) == 1 and 'after epoch 2, transformer 2 samples off the input' in first[0]
    assert '--loc-lr-mult' in first[0]
    assert train.lost_transformers(np.concatenate([on, off], 1), 3, warned) == []


@needs_mnist
def test_ctrl_c_leaves_a_checkpoint_that_resume_continues(tmp_path):
    command = [sys.executable, os.path.join(ROOT, 'train.py'), '--data-dir', REAL_DIR,
               '--out', str(tmp_path), '--train-size', '2000', '--epochs', '50']
    # Ctrl-C reaches train.py even when these tests run as a background job (whose shell starts
    # them with SIGINT ignored, which Python then keeps)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while (rundir.checkpoint_epoch(str(tmp_path)) or 0) < 1:   # the pointer is written last
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert 'interrupted in epoch' in err and '--resume' in err
    done = json.load(open(tmp_path / 'checkpoint.json'))['epoch']
    assert done >= 1
    train.main(['--data-dir', REAL_DIR, '--out', str(tmp_path), '--resume', '--epochs', str(done + 1)])
    assert [int(r['epoch']) for r in metrics(tmp_path)] == list(range(1, done + 2))


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('distorted'))


@pytest.fixture
def distorted_cache(cache_dir, monkeypatch):
    monkeypatch.setattr(train.distort, 'CACHE_DIR', cache_dir)


@needs_mnist
@pytest.mark.parametrize('model', [[], ['--no-stn']], ids=['stn', 'lenet'])
def test_a_distorted_set_trains_and_is_recorded(tmp_path, distorted_cache, model):
    train.main(['--data-dir', REAL_DIR, '--out', str(tmp_path), '--dataset', 'rts',
                '--train-size', '4000', '--epochs', '2', '--batch-size', '32', *model])
    rows = metrics(tmp_path)
    assert [row['dataset'] for row in rows] == ['rts', 'rts']
    config = json.load(open(tmp_path / 'config.json'))
    assert config['image_shape'] == [1, 42, 42]
    assert config['distortion'] == dict(train.distort.DEFAULTS['rts'], version=train.distort.VERSION)
    assert float(rows[1]['train_loss']) < float(rows[0]['train_loss'])
    assert float(rows[1]['test_acc']) > 0.15  # above chance (0.11) after 8,000 images


@needs_mnist
def test_fresh_distortions_draw_a_new_training_set_every_epoch(tmp_path, distorted_cache,
                                                              monkeypatch):
    seeds = []
    original = train.distort.distort

    def spy(name, images, seed, **params):
        seeds.append((name, len(images), seed))
        return original(name, images, seed, **params)

    monkeypatch.setattr(train.distort, 'distort', spy)
    train.main(['--data-dir', REAL_DIR, '--out', str(tmp_path), '--dataset', 'r',
                '--train-size', '500', '--epochs', '2', '--fresh-distortions'])
    per_epoch = [s for s in seeds if s[1] == 500]
    assert per_epoch == [('r', 500, (0, 2, 1)), ('r', 500, (0, 2, 2))]


@needs_mnist
def test_extending_a_finished_run_draws_and_predicts_with_the_new_weights(tmp_path):
    import predict
    from stngluon import pictures
    from mxnet import gluon
    import mxnet as mx
    flags = ['--data-dir', REAL_DIR, '--out', str(tmp_path), '--train-size', '1000']
    train.main([*flags, '--epochs', '1'])
    drawn = (tmp_path / 'compare.jpg').stat().st_mtime_ns
    train.main([*flags, '--resume', '--epochs', '2'])
    assert (tmp_path / 'model-0001.params').exists() and (tmp_path / 'model-0002.params').exists()
    assert (tmp_path / 'compare.jpg').stat().st_mtime_ns > drawn
    x = mx.nd.array(train.distort.load_dataset('mnist', REAL_DIR).test_x[:50])

    def logits(epoch):
        net = gluon.SymbolBlock.imports(str(tmp_path / 'model-symbol.json'), ['data'],
                                        str(tmp_path / f'model-{epoch:04d}.params'))
        return net(x).asnumpy()
    new, old = logits(2), logits(1)
    assert abs(new - old).max() > 1e-3
    np.testing.assert_allclose(pictures.load_model(str(tmp_path))(x)[2].asnumpy(), new, atol=1e-5)
    probabilities, _ = predict.load(str(tmp_path))
    np.testing.assert_allclose(probabilities(x.asnumpy()), mx.nd.softmax(mx.nd.array(new)).asnumpy(),
                               atol=1e-5)


def test_the_model_imports_no_data_generator_and_training_no_plotting():
    script = ('import sys, stn, net; assert "distort" not in sys.modules, "model imports distort"\n'
              'import train; assert "matplotlib" not in sys.modules, "train imports matplotlib"')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@needs_mnist
def test_a_batch_with_fewer_images_than_devices_trains_like_one_device(tmp_path):
    """--ctx cpu,cpu and a last batch of one image: the idle device adds a zero gradient
    (not its gradient of the batch before, nor a stale-gradient error)."""
    import mxnet as mx
    import train
    flags = ['--data-dir', REAL_DIR, '--train-size', '5', '--batch-size', '2', '--epochs', '1',
             '--model', 'fcn', '--width', '32']   # no dropout: the devices draw none
    train.main([*flags, '--ctx', 'cpu,cpu', '--out', str(tmp_path / 'two')])
    train.main([*flags, '--ctx', 'cpu', '--out', str(tmp_path / 'one')])
    two, one = (mx.nd.load(str(tmp_path / d / 'model-0001.params')) for d in ('two', 'one'))
    for name in one:
        np.testing.assert_allclose(two[name].asnumpy(), one[name].asnumpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


@needs_mnist
def test_an_interrupt_while_the_model_is_sized_is_one_line(tmp_path, monkeypatch):
    import net
    import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(net, 'fit_width', interrupted)
    with pytest.raises(SystemExit) as error:
        train.main(['--data-dir', REAL_DIR, '--model', 'fcn', '--out', str(tmp_path / 'run')])
    assert error.value.code == ('\ninterrupted before training began; nothing was trained: '
                                'start the run again')
    assert not (tmp_path / 'run' / 'checkpoint.json').exists()
