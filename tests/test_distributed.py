"""Data-parallel training across processes: MXNet's dist_sync kvstore on loopback (one
scheduler, one server, two workers, all on 127.0.0.1), started by launch.py or by hand,
bounded by timeouts, leaving no process behind."""
import contextlib
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

from scripts import launch
import predict
from stngluon import rundir
from conftest import metrics
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--model', 'fcn', '--width', '32', '--batch-size', '40']   # no dropout: one process
                                                                   # trains the same weights
# How often the tests under load repeat their run: STN_DIST_REPEATS=20 to check a fix of a
# race (CI runs each once).
REPEATS = int(os.environ.get('STN_DIST_REPEATS', '1'))


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


@contextlib.contextmanager
def busy_machine(tmp_path):
    """Another training run on the machine (one OpenMP thread) for as long as the block runs:
    the workers and the servers then share the cores with it, as on a loaded CI machine."""
    load = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), '--data-dir',
                             REAL_DIR, '--out', str(tmp_path / 'load'), '--epochs', '1000'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS='1'), start_new_session=True)
    try:
        yield
    finally:
        os.killpg(load.pid, signal.SIGKILL)
        load.wait()


def launched(command, workers=2, timeout=300):
    """launch.py running ``command``, marked so that the test can find every process it
    started; returns (exit code, stderr, processes left behind)."""
    mark = uuid.uuid4().hex
    done = subprocess.run([sys.executable, 'scripts/launch.py', '-n', str(workers), *command], cwd=ROOT,
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


def start(role, command, port, log):
    env = dict(os.environ, DMLC_ROLE=role, DMLC_PS_ROOT_URI='127.0.0.1',
               DMLC_PS_ROOT_PORT=str(port), DMLC_NUM_SERVER='1', DMLC_NUM_WORKER='2',
               DMLC_INTERFACE='lo', OMP_NUM_THREADS='1')
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


@contextlib.contextmanager
def started_by_hand(command, logs):
    """A scheduler, a server and two workers running ``command``, started one by one as
    docs/scaling-out.md does without launch.py, their output in ``logs``/{scheduler,
    server, w0, w1}.log; yields (processes, log paths) and kills what is left at the end."""
    port = launch.free_port()
    logs.mkdir()
    paths = [logs / f'{name}.log' for name in ('scheduler', 'server', 'w0', 'w1')]
    files = [open(path, 'w') for path in paths]
    processes = [start('scheduler', launch.NODE, port, files[0]),
                 start('server', launch.NODE, port, files[1]),
                 start('worker', command, port, files[2]), start('worker', command, port, files[3])]
    try:
        yield processes, paths
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for f in files:
            f.close()


def by_hand(command, logs, timeout=300):
    """``command`` run by two workers started by hand; returns the workers' output."""
    with started_by_hand(command, logs) as (processes, paths):
        codes = [p.wait(timeout=timeout) for p in processes]
    log = paths[2].read_text() + paths[3].read_text()
    assert codes == [0, 0, 0, 0], log
    return log


def final_weights(log):
    """{rank: fingerprint} of the weights each worker ends with, from its last line."""
    return dict(re.findall(r'worker (\d) of 2 ends with weights ([0-9a-f]{16})', log))


@needs_mnist
@pytest.mark.parametrize('how', ['launch.py', 'by hand'])
def test_under_load_the_workers_agree_and_every_run_repeats_the_first(tmp_path, how):
    runs = set()
    with busy_machine(tmp_path):
        for k in range(REPEATS):
            out = tmp_path / f'run{k}'
            command = train_command(out, '--train-size', '400', '--epochs', '1',
                                    '--kvstore', 'dist_sync')
            if how == 'launch.py':
                code, log, left = launched(command)
                assert code == 0 and left == [], log
            else:
                log = by_hand(command, tmp_path / f'logs{k}')
            ends = final_weights(log)
            assert sorted(ends) == ['0', '1'] and ends['0'] == ends['1'], f'run {k + 1}: {log}'
            row = metrics(out)[-1]
            runs.add((ends['0'], row['train_loss'], row['test_loss'], row['test_acc']))
    assert len(runs) == 1, runs   # the same flags, the same run


@needs_mnist
def test_two_workers_on_loopback_train_what_one_process_trains_and_rank_0_writes(tmp_path):
    out = tmp_path / 'dist'
    flags = ['--train-size', '400', '--epochs', '1']
    code, log, left = launched(train_command(out, *flags, '--kvstore', 'dist_sync'))
    assert code == 0 and left == [], log
    assert log.count('epoch  train_loss') == 1   # rank 0 alone reports
    ends = final_weights(log)
    assert sorted(ends) == ['0', '1'] and ends['0'] == ends['1'], log
    assert [r['epoch'] for r in metrics(out)] == ['1']
    assert_same_weights(mx.nd.load(str(out / 'model-0001.params')),
                        one_process(tmp_path / 'one', *flags))
    probabilities, _ = predict.load(str(out))
    from stngluon import distort
    data = distort.load_dataset('mnist', REAL_DIR)
    accuracy = (probabilities(data.test_x).argmax(1) == data.test_y).mean()
    assert f'{accuracy:.4f}' == metrics(out)[-1]['test_acc']


EVERY_WORKER_STARTS_FROM_RANK_0 = """from stngluon import runtime; runtime.configure()
from stngluon import compat, engine
from stngluon.config import RunConfig
import mxnet as mx
kv = mx.kv.create('dist_sync')
mx.random.seed(kv.rank)   # each worker draws other initial weights
model = engine.GluonModel(RunConfig(model='fcn', width=8), (40, 1, 28, 28),
                          [mx.cpu()], kvstore=kv)
print(f'worker {kv.rank} starts from {model.fingerprint()}', flush=True)   # one write
kv._barrier()
"""


def test_every_worker_holds_rank_0s_weights_before_its_first_gradient():
    """The weights go from rank 0 to the others while the model is built. Left to the first
    Trainer.step, the pull of the weights is queued beside the push of the first gradients,
    in no fixed order; with update_on_kvstore=False the servers hold summed gradients under
    the same keys, so a pull that goes out after the push is answered with the gradient sum
    and that worker trains from wrong weights (under load, about one run in twenty)."""
    code, log, left = launched([sys.executable, '-c', EVERY_WORKER_STARTS_FROM_RANK_0],
                               timeout=120)
    assert code == 0 and left == [], log
    starts = dict(re.findall(r'worker (\d) starts from ([0-9a-f]{16})', log))
    assert sorted(starts) == ['0', '1'] and starts['0'] == starts['1'], log




def kill_rank_1_after_epoch_1(out, flags, logs):
    """Start a run by hand (no launcher to stop the rest), kill rank 1 once epoch 1 is
    checkpointed; rank 0 must notice through its watchdog. Returns rank 0's last line. (The
    timeout is long enough that a healthy worker on a loaded machine never reaches it: the
    other's start-up, rank 0's evaluation between epochs.)"""
    train = train_command(out, *flags, '--kvstore', 'dist_sync', '--dist-timeout', '30')
    with started_by_hand(train, logs) as (processes, paths):
        deadline = time.time() + 120
        while rundir.checkpoint_epoch(str(out)) in (None, 0):   # epoch 1 done
            assert time.time() < deadline and processes[2].poll() is None, paths[2].read_text()
            time.sleep(0.02)
        rank1 = 2 if 'worker 1 of 2' in paths[2].read_text() else 3
        rank0 = 5 - rank1
        processes[rank1].kill()
        killed = time.time()
        assert processes[rank0].wait(timeout=180) == 1
        assert time.time() - killed < 120   # the 30 s timeout, not forever
    return paths[rank0].read_text().strip().splitlines()[-1]


@needs_mnist
def test_a_killed_worker_stops_the_run_within_the_timeout_and_resume_finishes_it(tmp_path):
    flags = ['--train-size', '4000', '--epochs', '4']
    with busy_machine(tmp_path):
        code, log, left = launched(train_command(tmp_path / 'whole', *flags,
                                                 '--kvstore', 'dist_sync'))
        assert code == 0 and left == [], log   # the run, uninterrupted
        whole = mx.nd.load(str(tmp_path / 'whole' / 'model-0004.params'))
        for k in range(REPEATS):
            out = tmp_path / f'run{k}'
            message = kill_rank_1_after_epoch_1(out, flags, tmp_path / f'logs{k}')
            kept = rundir.checkpoint_epoch(str(out))
            assert 1 <= kept < 4, message
            assert message.startswith('error: no progress for 30 s (--dist-timeout) while '
                                      'training epoch')
            assert f'checkpoint (epoch {kept}) is kept in {out}' in message
            assert '--resume' in message
            assert [int(r['epoch']) for r in metrics(out)] == list(range(1, kept + 1))

            code, log, left = launched(train_command(out, *flags, '--kvstore', 'dist_sync',
                                                     '--resume'))
            assert code == 0 and left == [], log
            assert f'resuming {out} after epoch {kept} of 4' in log
            assert [int(r['epoch']) for r in metrics(out)] == [1, 2, 3, 4]
            resumed = mx.nd.load(str(out / 'model-0004.params'))   # the same weights
            for name in whole:
                np.testing.assert_array_equal(
                    resumed[name].asnumpy(), whole[name].asnumpy(),
                    f'{name}, run {k + 1} resumed after epoch {kept}:\n'
                    f'{(out / "metrics.csv").read_text()}\n'
                    f'{(tmp_path / "whole" / "metrics.csv").read_text()}\n{log}')


FAILING_WORKER = """from stngluon import runtime; runtime.configure()
from stngluon import compat
import mxnet as mx, os, time
kv = mx.kv.create('dist_sync')
if kv.rank == 1:
    os._exit(3)
kv._barrier()   # waits forever for worker 1
"""


def test_the_launcher_stops_every_process_when_one_worker_fails(tmp_path):
    # (worker 0 would wait in the barrier forever: launched's timeout catches a launcher
    # that does not stop it)
    code, log, left = launched([sys.executable, '-c', FAILING_WORKER], timeout=120)
    assert code == 3 and left == [], log
    assert 'launch.py: worker' in log and 'exit code 3; stopped every other process' in log


def test_the_symbolic_api_says_it_trains_in_one_process(capsys):
    import train
    with pytest.raises(SystemExit):
        train.parse_args(['--api', 'symbol', '--kvstore', 'dist_sync'])
    assert '--api symbol trains in one process' in capsys.readouterr().err


def test_a_command_that_cannot_start_stops_the_scheduler_and_servers_with_one_line():
    code, log, left = launched(['/nonexistent/cmd'], workers=1, timeout=60)
    assert code == 127 and left == [], log
    assert log.strip() == ("launch.py: cannot start the workers' command '/nonexistent/cmd': No "
                           "such file or directory; stopped the scheduler and servers")


def test_a_worker_that_exits_without_joining_the_run_fails_it():
    code, log, left = launched([sys.executable, '-c', 'pass'], timeout=120)
    assert code == 1 and left == [], log
    assert 'a worker ended without joining the run' in log and 'Traceback' not in log


@pytest.mark.parametrize('flags, message', [
    (['--port', '70000'], '--port 70000: use a free port between 1024 and 65535'),
    (['-n', '100000'], '-n and -s must be between 1 and 64'),
    (['-n', '0'], '-n and -s must be between 1 and 64')])
def test_the_launcher_checks_its_flags_before_starting_anything(flags, message, capsys):
    with pytest.raises(SystemExit):
        launch.main([*flags, 'python', 'train.py'] if '-n' in flags
                    else ['-n', '2', *flags, 'python', 'train.py'])
    assert message in capsys.readouterr().err
