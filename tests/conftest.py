"""Shared fixtures: short real training runs (only when MNIST is available)."""
import json
import os
import subprocess
import sys

import pytest

# The tests run with fixed execution settings (a wait policy given), so that no train.py they
# start times them first (runtime.py; tests/test_runtime.py tests that). PASSIVE: the tests'
# own child processes share the cores, where spinning threads only slow each other down (the
# wait policy changes no result).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
# A test that does time them (its own cache, no wait policy) times them as on an idle
# machine, whatever else runs beside the tests; tests/test_runtime.py tests the measured load.
os.environ.setdefault('STN_BUSY_CORES', '0')

from stngluon import rundir, runtime  # noqa: E402

runtime.configure()   # as every script does, before MXNet loads

QUICK = ['--train-size', '5000', '--epochs', '2', '--batch-size', '32']


def bits(array):
    """An NDArray's float32 values as their bit patterns (int32), for exact comparisons."""
    return array.asnumpy().view('int32')


def output_and_gradient(function, x, head):
    """The bits of ``function(x)`` and of x's gradient under the output gradient ``head``."""
    import mxnet as mx
    x = x.copy()
    x.attach_grad()
    with mx.autograd.record():
        y = function(x)
    y.backward(head)
    return bits(y), bits(x.grad)


def in_child(code, **env):
    """stdout's last line of ``code`` run in a fresh Python (in the repository root) with
    ``env`` added to the environment; the test fails with its stderr if it fails."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def metrics(out):
    return rundir.read_metrics(str(out))


def brief_train_py(data_dir, out, **env):
    """(the sampler config.json names, metrics.csv's rows without the timings, the exported
    weights) of train.py on 1,000 images for one epoch, two threads, ``env`` added to the
    environment."""
    import mxnet as mx
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, 'train.py', '--data-dir', data_dir, '--out', str(out),
                    '--train-size', '1000', '--epochs', '1', '--batch-size', '32'],
                   cwd=root, check=True, timeout=600,
                   env=dict(os.environ, OMP_NUM_THREADS='2', **env))
    with open(os.path.join(out, 'config.json')) as f:
        sampler = json.load(f)['execution']['sampler']
    rows = [{k: v for k, v in row.items() if k not in ('imgs_per_s', 'epoch_s')}
            for row in metrics(out)]
    return sampler, rows, mx.nd.load(os.path.join(out, 'model-0001.params'))


@pytest.fixture(scope='session', params=['gluon', 'symbol'])
def quick_run(request, tmp_path_factory):
    """A finished 2-epoch run on 5,000 MNIST images with the Gluon or the symbolic API."""
    import train
    from test_mnist import REAL_DIR, needs_mnist
    if needs_mnist.args[0]:
        pytest.skip(needs_mnist.kwargs['reason'])
    out = tmp_path_factory.mktemp(f'quick-{request.param}')
    train.main(['--data-dir', REAL_DIR, '--out', str(out), '--api', request.param, *QUICK])
    return out


@pytest.fixture(scope='session')
def op_library():
    """The operator library (stngluon/ops.py), built as `make ops` builds it (where g++ and
    the mxnet wheel's headers are), loaded."""
    from stngluon import ops
    if not ops.fresh(ops.library_path()):
        try:
            ops.build()
        except RuntimeError as e:
            pytest.skip(f'the operator library cannot be built here: {e}')
    assert ops.load()
