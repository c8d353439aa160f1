"""Data-parallel training across processes: MXNet's dist_sync kvstore on loopback (one
scheduler, one server, two workers, all on 127.0.0.1), started by launch.py or by hand,
bounded by timeouts, leaving no process behind."""
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import mxnet as mx
import numpy as np
import psutil
import pytest

import launch
import predict
import rundir
from conftest import metrics
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--model', 'fcn', '--width', '32', '--batch-size', '40']   # no dropout: one process
                                                                   # trains the same weights


def train_command(out, *flags):
    return [sys.executable, os.path.join(ROOT, 'train.py'), '--data-dir', REAL_DIR, '--out',
            str(out), *FLAGS, *flags]


def one_process(out, *flags):
    """The same run in one process, one thread as each worker (launch.py: cores / workers)."""
    done = subprocess.run(train_command(out, *flags), timeout=300, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 0, done.stderr
    return mx.nd.load(str(out / f'model-{metrics(out)[-1]["epoch"].zfill(4)}.params'))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name].asnumpy(), b[name].asnumpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=name)


def launched(command, workers=2, timeout=300):
    """launch.py running ``command``, marked so that the test can find every process it
    started; returns (exit code, stderr, processes left behind)."""
    mark = uuid.uuid4().hex
    done = subprocess.run([sys.executable, 'launch.py', '-n', str(workers), *command], cwd=ROOT,
                          timeout=timeout, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1', STN_TEST_MARK=mark))
    time.sleep(0.5)
    left = []
    for process in psutil.process_iter():
        try:
            if process.environ().get('STN_TEST_MARK') == mark:
                left.append(process)
        except (psutil.Error, OSError):
            pass
    for process in left:
        process.kill()
    return done.returncode, done.stdout + done.stderr, left


@needs_mnist
def test_two_workers_on_loopback_train_what_one_process_trains_and_rank_0_writes(tmp_path):
    out = tmp_path / 'dist'
    flags = ['--train-size', '400', '--epochs', '1']
    code, log, left = launched(train_command(out, *flags, '--kvstore', 'dist_sync'))
    assert code == 0 and left == [], log
    assert log.count('epoch  train_loss') == 1   # rank 0 alone reports
    ends = re.findall(r'worker (\d) of 2 ends with weights ([0-9a-f]{16})', log)
    assert sorted(k for k, _ in ends) == ['0', '1'] and ends[0][1] == ends[1][1], log
    assert [r['epoch'] for r in metrics(out)] == ['1']
    assert_same_weights(mx.nd.load(str(out / 'model-0001.params')),
                        one_process(tmp_path / 'one', *flags))
    probabilities, _ = predict.load(str(out))
    import distort
    data = distort.load_dataset('mnist', REAL_DIR)
    accuracy = (probabilities(data.test_x).argmax(1) == data.test_y).mean()
    assert f'{accuracy:.4f}' == metrics(out)[-1]['test_acc']


def start(role, command, port, log):
    env = dict(os.environ, DMLC_ROLE=role, DMLC_PS_ROOT_URI='127.0.0.1',
               DMLC_PS_ROOT_PORT=str(port), DMLC_NUM_SERVER='1', DMLC_NUM_WORKER='2',
               DMLC_INTERFACE='lo', OMP_NUM_THREADS='1')
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


@needs_mnist
def test_a_killed_worker_stops_the_run_within_the_timeout_and_resume_finishes_it(tmp_path):
    """Started by hand (no launcher to stop the rest), rank 0 notices through its watchdog."""
    out, port = tmp_path / 'dist', launch.free_port()
    flags = ['--train-size', '4000', '--epochs', '4']
    train = train_command(out, *flags, '--kvstore', 'dist_sync', '--dist-timeout', '5')
    logs = [tmp_path / f'{name}.log' for name in ('scheduler', 'server', 'w0', 'w1')]
    files = [open(log, 'w') for log in logs]
    processes = [start('scheduler', launch.NODE, port, files[0]),
                 start('server', launch.NODE, port, files[1]),
                 start('worker', train, port, files[2]), start('worker', train, port, files[3])]
    try:
        deadline = time.time() + 120
        while rundir.checkpoint_epoch(str(out)) in (None, 0):   # epoch 1 done
            assert time.time() < deadline and processes[2].poll() is None, logs[2].read_text()
            time.sleep(0.02)
        rank1 = 2 if 'worker 1 of 2' in logs[2].read_text() else 3
        rank0 = 5 - rank1
        processes[rank1].kill()
        killed = time.time()
        assert processes[rank0].wait(timeout=60) == 1
        assert time.time() - killed < 30   # the 5 s timeout, not forever
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for f in files:
            f.close()
    message = logs[rank0].read_text().strip().splitlines()[-1]
    kept = rundir.checkpoint_epoch(str(out))
    assert 1 <= kept < 4, message
    assert message.startswith('error: no progress for 5 s (--dist-timeout) while training epoch')
    assert f'checkpoint (epoch {kept}) is kept in {out}' in message and '--resume' in message
    assert [int(r['epoch']) for r in metrics(out)] == list(range(1, kept + 1))

    code, log, left = launched(train_command(out, *flags, '--kvstore', 'dist_sync', '--resume'))
    assert code == 0 and left == [], log
    assert f'resuming {out} after epoch {kept} of 4' in log
    assert [int(r['epoch']) for r in metrics(out)] == [1, 2, 3, 4]
    code, log, left = launched(train_command(tmp_path / 'whole', *flags, '--kvstore', 'dist_sync'))
    assert code == 0 and left == [], log   # the same run, uninterrupted: the same weights
    resumed, whole = (mx.nd.load(str(o / 'model-0004.params')) for o in (out, tmp_path / 'whole'))
    for name in whole:
        np.testing.assert_array_equal(
            resumed[name].asnumpy(), whole[name].asnumpy(),
            f'{name}, resumed after epoch {kept}:\n{(out / "metrics.csv").read_text()}\n'
            f'{(tmp_path / "whole" / "metrics.csv").read_text()}\n{log}')


FAILING_WORKER = """import compat, mxnet as mx, os, time
kv = mx.kv.create('dist_sync')
if kv.rank == 1:
    os._exit(3)
kv._barrier()   # waits forever for worker 1
"""


def test_the_launcher_stops_every_process_when_one_worker_fails(tmp_path):
    start = time.time()
    code, log, left = launched([sys.executable, '-c', FAILING_WORKER], timeout=120)
    assert code == 3 and left == [], log
    assert 'launch.py: worker' in log and 'exit code 3; stopped every other process' in log
    assert time.time() - start < 60


def test_the_symbolic_api_says_it_trains_in_one_process(capsys):
    import train
    with pytest.raises(SystemExit):
        train.parse_args(['--api', 'symbol', '--kvstore', 'dist_sync'])
    assert '--api symbol trains in one process' in capsys.readouterr().err
