"""engine.py: one learning-rate schedule (GluonCV's schedulers) that both APIs follow, the
rate metrics.csv logs, the running loss, the feeding of batches, several devices, and the
watchdog of a distributed run."""
import os

import mxnet as mx
import numpy as np
import pytest

from stngluon import engine
from stngluon import symbolic
from stngluon.config import RunConfig


def schedule(*flags, batches=10):
    return engine.Schedule(RunConfig.from_flags(list(flags)), batches)


def test_the_step_schedule_divides_the_rate_after_each_step_epoch_and_not_before():
    s = schedule('--lr', '0.01', '--lr-steps', '12,16', '--epochs', '20')
    for epoch, rate in [(1, 0.01), (12, 0.01), (13, 0.001), (16, 0.001), (17, 0.0001), (20, 0.0001)]:
        assert s.epoch_rates(epoch) == pytest.approx([rate] * 10), epoch


def test_the_cosine_schedule_warms_up_linearly_then_decays_to_zero_at_the_end():
    s = schedule('--lr', '0.1', '--lr-mode', 'cosine', '--warmup-epochs', '1', '--epochs', '5')
    warmup = s.epoch_rates(1)
    assert warmup[0] == 0 and np.all(np.diff(warmup) > 0) and warmup[-1] == pytest.approx(0.1)
    rest = np.concatenate([s.epoch_rates(e) for e in range(2, 6)])
    # GluonCV's cosine: lr (1 + cos(pi t / (T - 1))) / 2 over the T = 40 updates after the warm-up.
    np.testing.assert_allclose(rest, 0.1 * (1 + np.cos(np.pi * np.arange(40) / 39)) / 2, atol=1e-12)


def test_the_step_schedule_after_a_warm_up_keeps_its_steps_at_the_same_epochs():
    s = schedule('--lr', '0.01', '--warmup-epochs', '2', '--lr-steps', '3', '--epochs', '4')
    warmup = s.epoch_rates(1) + s.epoch_rates(2)
    assert warmup[0] == 0 and np.all(np.diff(warmup) > 0) and warmup[-1] == pytest.approx(0.01)
    assert s.epoch_rates(3) == pytest.approx([0.01] * 10)
    assert s.epoch_rates(4) == pytest.approx([0.001] * 10)


@pytest.mark.parametrize('flags', [['--lr-steps', '1,2'], ['--lr-mode', 'cosine', '--warmup-epochs', '1']],
                         ids=['step', 'cosine-warmup'])
def test_both_apis_train_with_the_rates_of_one_schedule_and_report_the_last_one(flags):
    # 96 images in batches of 32: three updates an epoch in either API.
    args = RunConfig.from_flags(['--epochs', '3', '--batch-size', '32', '--lr', '0.01', *flags])
    rng = np.random.RandomState(0)
    x, y = rng.rand(96, 1, 28, 28).astype(np.float32), rng.randint(0, 10, 96)
    expected = engine.Schedule(args, 3)
    for model in (engine.GluonModel(args, x.shape, mx.cpu()),
                  symbolic.ModuleModel(args, x.shape, mx.cpu())):
        rates = []
        for epoch in (1, 2, 3):
            model.fit_epoch(epoch, x, y)
            rates.append(model.learning_rate)
        assert rates == pytest.approx([expected(3), expected(6), expected(9)]), type(model)
    assert len(set(np.round(rates, 8))) == 3   # the rate really changed from epoch to epoch


def test_the_sums_of_a_list_of_losses_are_each_losss_own_sum_bit_for_bit():
    rng = np.random.RandomState(0)
    losses = [mx.nd.array(rng.rand(n).astype(np.float32) * 3) for n in (64, 64, 64, 17, 64, 5, 5)]
    sums = engine.loss_sums(losses).asnumpy()
    assert sums.dtype == np.float32
    np.testing.assert_array_equal(sums, [loss.sum().asscalar() for loss in losses])


@pytest.mark.parametrize('check_every', [2, 50])
def test_the_epochs_loss_is_every_batchs_loss_summed_in_order_in_float32(monkeypatch, check_every):
    # 100 images in batches of 32: a last batch of 4, inside a stretch between checks or not
    monkeypatch.setattr(engine, 'CHECK_EVERY', check_every)
    args = RunConfig.from_flags(['--batch-size', '32'])
    rng = np.random.RandomState(0)
    x, y = rng.rand(100, 1, 28, 28).astype(np.float32), rng.randint(0, 10, 100)
    model, batch_losses = engine.GluonModel(args, x.shape, mx.cpu()), []
    batch_loss = model.batch_loss
    model.batch_loss = lambda images, label: (batch_losses.append(batch_loss(images, label))
                                              or batch_losses[-1])
    mean, _ = model.fit_epoch(1, x, y)
    assert [len(loss) for loss in batch_losses] == [32, 32, 32, 4]
    total = mx.nd.zeros(1)
    for loss in batch_losses:   # what the loop once ran: an operator or two per batch
        total += loss.sum()
    assert mean == total.asscalar() / 100


def test_the_running_loss_reads_the_sums_it_started_one_check_before_and_all_at_the_last():
    rng = np.random.RandomState(0)
    losses = [mx.nd.array(rng.rand(n).astype(np.float32) * 3) for n in (64, 64, 17)]
    total = np.float32(0)
    running = engine.RunningLoss()
    running.add([losses[0]])
    assert np.isnan(running.check()) and running.images == 0   # started, not waited for
    running.add([losses[1]])
    total = np.float32(total + losses[0].sum().asscalar())
    assert running.check() == total / 64 and (running.images, running.batches) == (64, 1)
    running.add([losses[2]])
    for loss in losses[1:]:
        total = np.float32(total + loss.sum().asscalar())
    assert running.check(last=True) == total / 145 and (running.images, running.batches) == (145, 3)


def test_every_batch_is_the_epochs_shuffle_of_the_set_through_both_gather_buffers(monkeypatch):
    # 100 images in batches of 8, two batches a gather: seven gathers, the two buffers in turn
    monkeypatch.setattr(engine, 'GATHER', 2)
    args = RunConfig.from_flags(['--batch-size', '8', '--model', 'fcn', '--width', '16'])
    rng = np.random.RandomState(0)
    x, y = rng.rand(100, 1, 28, 28).astype(np.float32), rng.randint(0, 10, 100)
    model, seen = engine.GluonModel(args, x.shape, mx.cpu()), []
    batch_loss = model.batch_loss
    model.batch_loss = lambda images, label: seen.append(label.asnumpy()) or batch_loss(images, label)
    for epoch in (1, 2):
        seen.clear()
        model.fit_epoch(epoch, x, y)
        order = engine.epoch_order(args, epoch, len(x))
        np.testing.assert_array_equal(np.concatenate(seen), y[order])
    assert model.gathered[0].images is not model.gathered[1].images


def test_a_gather_buffer_is_written_only_once_mxnet_has_read_what_it_held():
    if os.environ.get('MXNET_ENGINE_TYPE') == 'NaiveEngine':
        pytest.skip('every operator is done when it returns: nothing to wait for')
    gathered = engine.Gathered((4, 3))
    old, new = np.arange(12, dtype=np.float32).reshape(4, 3), np.full((4, 3), -1, np.float32)
    labels = np.zeros(4, np.float32)
    gathered.take(old, labels, np.arange(4))
    a = mx.nd.random.uniform(shape=(800, 800))
    for _ in range(8):   # some 100 ms of work that the read below waits for
        a = mx.nd.dot(a, a) / 800
    read = mx.nd.broadcast_add(gathered.images_nd, a.sum().reshape((1, 1)) * 0)
    gathered.take(new, labels, np.arange(4))   # before MXNet has read the old images
    np.testing.assert_array_equal(read.asnumpy(), old)
    np.testing.assert_array_equal(gathered.images_nd.asnumpy(), new)


def test_a_process_forks_while_a_trained_model_is_let_go_of(tmp_path):
    # MXNet's fork handler waits for its engine while the forking thread holds the
    # interpreter: memory whose release needs the interpreter (numpy's, lent to MXNet, which
    # a Python callback on the engine's thread gives back) would hang the fork. It did, in
    # the Ctrl-C test's start of train.py, a model of an earlier test let go of just before.
    import subprocess
    import sys
    script = tmp_path / 'fork.py'
    script.write_text(
        'import gc, os\n'
        'from stngluon import runtime\n'
        'runtime.configure()\n'
        'import numpy as np, mxnet as mx\n'
        'from stngluon import engine\n'
        'from stngluon.config import RunConfig\n'
        'x = np.random.rand(200, 1, 28, 28).astype(np.float32)\n'
        'y = np.random.randint(0, 10, 200)\n'
        'model = engine.GluonModel(RunConfig(model="fcn", width=16), x.shape, mx.cpu())\n'
        'model.fit_epoch(1, x, y)\n'
        'a = mx.nd.random.uniform(shape=(800, 800))\n'
        'for _ in range(8):\n'   # some 100 ms of work before MXNet reads the batches
        '    a = mx.nd.dot(a, a) / 800\n'
        'read = mx.nd.broadcast_add(model.gathered[0].images_nd, a.sum().reshape((1, 1, 1, 1)) * 0)\n'
        'del model, read\n'
        'gc.collect()\n'
        'pid = os.fork()\n'   # while MXNet lets go of the batches' memory
        'if pid == 0:\n'
        '    os._exit(0)\n'
        'os.waitpid(pid, 0)\n'
        'print("forked")\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=root))
    assert result.stdout.split()[-1:] == ['forked'], result.stderr


@pytest.mark.parametrize('order', ['stngluon.engine, torch', 'torch, stngluon.engine'])
def test_training_imports_beside_a_pytorch_2_that_gluoncv_would_refuse(tmp_path, order):
    import os
    import subprocess
    import sys
    (tmp_path / 'torch').mkdir()
    (tmp_path / 'torch' / '__init__.py').write_text("__version__ = '2.5.0'\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, '-c', f'import {order}; print(torch.__version__)'],
                            cwd=root, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{root}'))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == '2.5.0'   # torch itself still imports afterwards


def test_two_devices_train_the_weights_one_device_trains_from_the_same_global_batches():
    # The FCN has no dropout, so the two runs draw nothing at random after the same init.
    config = RunConfig(model='fcn', width=32, batch_size=32, epochs=2)
    rng = np.random.RandomState(0)
    x, y = rng.rand(100, 1, 28, 28).astype(np.float32), rng.randint(0, 10, 100).astype(np.int32)
    weights = []
    for devices in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        mx.random.seed(1)
        model = engine.GluonModel(config, x.shape, devices, kvstore='local')
        model.fit_epoch(1, x, y)   # 3 batches of 32 and one of 4, each split across the devices
        weights.append({n: p.data(devices[-1]).asnumpy()
                        for n, p in model.net.collect_params().items()})
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_allclose(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    moved = max(abs(weights[1][n] - model.net.collect_params()[n].data(mx.cpu(0)).asnumpy()).max()
                for n in weights[0])
    assert moved == 0   # every device holds the same weights after the update


WATCHED = '''
import sys, time
from stngluon.engine import Watchdog
dog = Watchdog(2.0, lambda what: f'stalled while {what}', poll=0.05)
with dog.armed('training'):
    for _ in range(int(sys.argv[1])):   # steps of 0.1 s, each beating
        time.sleep(0.1)
        dog.beat()
    time.sleep(float(sys.argv[2]))   # then silence
print('finished')
'''


@pytest.mark.parametrize('steps, silence, finishes', [(60, 0, True), (3, 600, False)])
def test_the_watchdog_ends_the_process_when_the_beats_stop_and_not_while_they_come(
        steps, silence, finishes):
    import subprocess
    import sys
    # a watchdog that never fired would leave the child in its 600 s of silence: the
    # 120 s timeout fails the test
    done = subprocess.run([sys.executable, '-c', WATCHED, str(steps), str(silence)], timeout=120,
                          capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__))))
    if finishes:   # 6 s of training with beats every 0.1 s outlasts the 2 s timeout
        assert done.returncode == 0 and 'finished' in done.stdout
    else:
        assert done.returncode == 1 and done.stderr.strip() == 'stalled while training'
