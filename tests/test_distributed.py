"""Data-parallel training across processes: MXNet's dist_sync kvstore on loopback (one
scheduler, one server, two workers, all on 127.0.0.1), bounded by timeouts, leaving no
process behind."""
import os
import signal
import socket
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import predict
from conftest import metrics
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--model', 'fcn', '--width', '32', '--train-size', '400', '--batch-size', '40',
         '--epochs', '1']   # the FCN has no dropout: one process gives the same weights


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start(role, command, port, log):
    env = dict(os.environ, DMLC_ROLE=role, DMLC_PS_ROOT_URI='127.0.0.1',
               DMLC_PS_ROOT_PORT=str(port), DMLC_NUM_SERVER='1', DMLC_NUM_WORKER='2',
               DMLC_INTERFACE='lo', OMP_NUM_THREADS='1')
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


@needs_mnist
def test_two_workers_on_loopback_train_what_one_process_trains_and_rank_0_writes(tmp_path):
    port, out = free_port(), tmp_path / 'dist'
    train = [sys.executable, 'train.py', '--data-dir', REAL_DIR, '--out', str(out), *FLAGS,
             '--kvstore', 'dist_sync']
    python_mxnet = [sys.executable, '-c', 'import compat, mxnet']   # a server or scheduler
    logs = [open(tmp_path / f'{name}.log', 'w') for name in ('scheduler', 'server', 'w0', 'w1')]
    processes = [start('scheduler', python_mxnet, port, logs[0]),
                 start('server', python_mxnet, port, logs[1]),
                 start('worker', train, port, logs[2]), start('worker', train, port, logs[3])]
    try:
        codes = [p.wait(timeout=300) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
    worker_logs = [open(tmp_path / f'w{k}.log').read() for k in (0, 1)]
    assert codes == [0, 0, 0, 0], worker_logs
    assert sum('epoch  train_loss' in log for log in worker_logs) == 1   # rank 0 alone reports
    assert [r['epoch'] for r in metrics(out)] == ['1']

    one_process = subprocess.run([sys.executable, 'train.py', '--data-dir', REAL_DIR, '--out',
                                  str(tmp_path / 'one'), *FLAGS], cwd=ROOT, timeout=300,
                                 capture_output=True, text=True,
                                 env=dict(os.environ, OMP_NUM_THREADS='1'))   # as the workers
    assert one_process.returncode == 0, one_process.stderr
    dist = mx.nd.load(str(out / 'model-0001.params'))
    one = mx.nd.load(str(tmp_path / 'one' / 'model-0001.params'))
    assert dist.keys() == one.keys()
    for name in one:
        np.testing.assert_allclose(dist[name].asnumpy(), one[name].asnumpy(), rtol=1e-4,
                                   atol=1e-4, err_msg=name)
    probabilities, _ = predict.load(str(out))
    import distort
    data = distort.load_dataset('mnist', REAL_DIR)
    accuracy = (probabilities(data.test_x).argmax(1) == data.test_y).mean()
    assert f'{accuracy:.4f}' == metrics(out)[-1]['test_acc']
