"""bench_train.py: it runs and prints its table (speed itself is the benchmark's to print,
not a test's), the two frameworks take turns, and its PyTorch twins have the parameter
counts of our networks; the other benchmarks run."""
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import bench_train, workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_benchmark_prints_a_row_per_workload_and_core_count():
    result = subprocess.run([sys.executable, 'benchmarks/bench_train.py', '--workloads', 'default',
                             '--cores', '1', '--repeats', '1', '--warmup', '1', '--steps', '2',
                             '--no-torch'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = [line.split() for line in result.stdout.splitlines() if line.startswith('default ')]
    # workload, cores, the execution settings (the environment's: conftest.py sets them),
    # images/s of the step, (peak MB), of train.py's loop, loop / step
    assert len(row) == 1 and row[0][1:3] == ['1', 'environment']
    assert float(row[0][3].replace(',', '')) > 0 and float(row[0][6].replace(',', '')) > 0
    header = result.stdout.splitlines()[0]   # the host, named
    assert header.startswith('host: ') and f'{len(os.sched_getaffinity(0))} usable cores' in header
    assert 'MXNET_ENGINE_TYPE=' in header and 'OMP_WAIT_POLICY=' in header


def test_the_benchmark_names_what_computed_the_fcns_input_layer(op_library):
    result = subprocess.run([sys.executable, 'benchmarks/bench_train.py', '--workloads', 'rts-fcn',
                             '--cores', '1', '--repeats', '1', '--warmup', '1', '--steps', '2',
                             '--no-torch'], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, STN_INPUT_DENSE='library'))
    assert result.returncode == 0, result.stderr
    assert "the FCN's input layer (STN_INPUT_DENSE): stn_input_dense (rts-fcn, 1 core(s))" \
        in result.stdout


@pytest.mark.parametrize('isa, asked, rts_cnn', [
    (['AVX-512', 'AVX-512 bf16'], 'auto', 'bfloat16'), (['AVX2'], 'auto', 'float32'),
    (['AVX-512', 'AVX-512 bf16'], 'float32', 'float32')])
def test_each_workload_runs_in_the_precision_train_py_would_resolve(monkeypatch, isa, asked,
                                                                     rts_cnn):
    """The flags carry it, so the header and each measuring process agree on it."""
    from stngluon import runtime
    monkeypatch.setattr(runtime, 'cpu', lambda: ('A CPU', isa))
    flags = workloads.with_resolved(['rts-cnn', 'rts-fcn'], asked)
    precision = {w: f[f.index('--precision') + 1] for w, f in flags.items()}
    assert precision == {'rts-cnn': rts_cnn, 'rts-fcn': 'float32'}
    assert '--width' in flags['rts-cnn']


def test_a_step_is_timed_in_whole_rounds_until_the_time_is_up(monkeypatch):
    """50 steps of the FCN take 40 ms, which one time slice of the scheduler would skew."""
    import time
    monkeypatch.setattr(workloads, 'SECONDS', 0.05)
    calls, syncs = [], []
    rate = workloads.time_steps(lambda: calls.append(time.sleep(0.002)), 64, 3, 4,
                                lambda: syncs.append(len(calls)))
    timed = len(calls) - 3
    assert timed % 4 == 0 and timed >= 0.05 / 0.002 * 0.5 and syncs[-1] == len(calls)
    assert rate == pytest.approx(64 / 0.002, rel=0.5)


def test_a_process_times_its_columns_in_turn_and_gives_their_medians():
    """A slow spell of the host (the second round here) weighs on one round of each column,
    not on the loop alone, so loop / step compares like with like."""
    rates, calls = {'step': iter([10.0, 2.0, 12.0]), 'loop': iter([9.0, 1.0, 11.0])}, []

    def timer(name):
        return lambda: calls.append(name) or next(rates[name])
    assert workloads.medians({name: timer(name) for name in rates}, 3) == {'step': 10.0,
                                                                            'loop': 9.0}
    assert calls == ['step', 'loop'] * 3


def test_a_ratio_of_columns_timed_side_by_side_is_the_median_of_each_rounds_ratio():
    """The host ran at half speed in the second round: each round's loop / step is 0.9, where
    the ratio of the two columns' medians would read 0.95."""
    steps, loops = [10.0, 10.0, 20.0], [9.0, 9.5, 18.0]
    assert workloads.paired_median(loops, steps) == pytest.approx(0.9)
    assert workloads.in_turn({'step': iter(steps).__next__, 'loop': iter(loops).__next__}, 3) \
        == {'step': steps, 'loop': loops}
    with pytest.raises(ValueError):
        workloads.paired_median([1.0], [1.0, 2.0])


def test_the_ratio_to_pytorch_pairs_the_steps_of_each_round_of_each_repeat():
    """The two processes of a repeat take turns round by round: each round's steps make a
    pair. A repeat in which one framework failed drops out of the ratio rather than
    pairing the other's rounds with a later repeat's."""
    def runs(rates):
        return [dict(imgs_per_s=sum(v) / len(v), step_rounds=v, loop_imgs_per_s=1.0,
                     loop_per_step=1.0, peak_mb=1, params=5, repeat=i) for i, v in rates]
    results = {('w', 1, 'mxnet'): runs([(0, [30.0, 15.0]), (1, [40.0, 40.0]), (2, [12.0, 11.0])]),
               ('w', 1, 'torch'): runs([(0, [20.0, 10.0]), (2, [10.0, 10.0])])}
    assert bench_train.paired(results, 'w', 1) == [1.5, 1.5, 1.2, 1.1]
    row = bench_train.table_row('w', 1, ['mxnet', 'torch'], results, {('w', 1): None}).split()
    assert row[-2:] == ['1.35', '1.10-1.50']   # the median of the pairs' ratios, their range


def fake_measuring(fail_at=None):
    """bench_train.measuring for processes that take turns as the real ones do (two timers
    for stn-gluon, one for PyTorch), each round a 50 ms sleep whose span they report;
    stn-gluon's fails before its round ``fail_at`` if given."""
    def measuring(framework, flags, cores, warmup, steps, rounds, settings=None, threads=None,
                  turns=False):
        assert turns
        names = ['step', 'loop'] if framework == 'mxnet' else ['step']
        fail = fail_at if framework == 'mxnet' else None
        code = f"""import sys, time, json; sys.path.insert(0, {ROOT!r})
from benchmarks import workloads as w
spans = []
def timer():
    if len(spans) == {fail!r}:
        sys.exit('failed on purpose')
    start = time.time(); time.sleep(0.05); spans.append((start, time.time())); return 1.0
runs = w.in_turn({{name: timer for name in {names!r}}}, {rounds}, w.take_turn)
print(json.dumps({{'spans': spans, 'step_rounds': runs['step']}}))"""
        return [sys.executable, '-c', code], dict(os.environ), sorted(os.sched_getaffinity(0))
    return measuring


def test_the_two_frameworks_take_turns_round_by_round_never_at_once(monkeypatch):
    """Each round: stn-gluon's step, PyTorch's, stn-gluon's loop; one process times at a time."""
    monkeypatch.setattr(bench_train, 'measuring', fake_measuring())
    runs = bench_train.taking_turns(['--flag'], 1, 1, 1, 3, None)
    spans = sorted((start, end, framework) for framework, r in runs.items()
                   for start, end in r['spans'])
    assert [framework for _, _, framework in spans] == ['mxnet', 'torch', 'mxnet'] * 3
    assert all(end <= next_start for (_, end, _), (next_start, _, _) in zip(spans, spans[1:]))
    assert runs['torch']['step_rounds'] == [1.0] * 3


def test_a_process_not_in_its_turn_is_stopped():
    """Stopped, its OpenMP threads cannot spin on the cores the other is timing on."""
    command, env, cpus = fake_measuring()('torch', [], 1, 1, 1, 2, turns=True)
    taker = bench_train.TurnTaker('torch', command, env, cpus)
    try:
        for _ in range(100):   # the signal is delivered asynchronously
            with open(f'/proc/{taker.process.pid}/stat') as stat:
                state = stat.read().rsplit(')', 1)[1].split()[0]
            if state == 'T':
                break
            time.sleep(0.01)
        assert state == 'T'
        assert taker.turn() and taker.turn() is False   # its two rounds, then its result
        assert taker.result['step_rounds'] == [1.0, 1.0]
    finally:
        taker.close()


def test_a_framework_that_fails_midway_leaves_the_other_to_finish(monkeypatch, capsys):
    monkeypatch.setattr(bench_train, 'measuring', fake_measuring(fail_at=3))
    runs = bench_train.taking_turns(['--flag'], 1, 1, 1, 3, None)
    assert runs['mxnet'] is None and runs['torch']['step_rounds'] == [1.0] * 3
    err = capsys.readouterr().err
    assert 'mxnet failed' in err and 'failed on purpose' in err   # its own error, shown


def test_an_unknown_workload_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        bench_train.main(['--workloads', 'vgg'])
    assert 'unknown workloads' in capsys.readouterr().err


def test_a_busy_bench_keeps_a_process_spinning_on_the_last_core_until_it_ends(monkeypatch, capsys):
    core = sorted(os.sched_getaffinity(0))[-1]
    with bench_train.spinning_on(core) as spinner:
        assert spinner.poll() is None and os.sched_getaffinity(spinner.pid) == {core}
    assert spinner.poll() is not None
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0})
    with pytest.raises(SystemExit):   # nothing left to time beside it
        bench_train.main(['--busy'])
    assert 'may use only one' in capsys.readouterr().err


@pytest.mark.parametrize('workload', bench_train.TABLE1_KINDS)
def test_the_pytorch_twins_have_our_parameter_counts(workload):
    pytest.importorskip('torch')
    from stngluon import engine
    import mxnet as mx
    args = workloads.config_of(workloads.WORKLOADS[workload])
    from benchmarks import twins
    model, side = twins.twin(args)
    ours = engine.GluonModel(args, (10, 1, side, side), mx.cpu()).num_params
    assert sum(p.numel() for p in model.parameters()) == ours


def test_the_settings_benchmark_times_both_engines_with_each_wait_policy_and_one_thread():
    from benchmarks import bench_settings
    table = bench_settings.settings(4)
    assert {(s['MXNET_ENGINE_TYPE'], s['OMP_WAIT_POLICY'], s['OMP_NUM_THREADS'])
            for s in table.values()} == {
        (engine, wait, threads) for engine in ('ThreadedEnginePerDevice', 'NaiveEngine')
        for wait, threads in (('ACTIVE', '4'), ('PASSIVE', '4'), ('ACTIVE', '1'))}


def test_the_settings_benchmark_prints_a_table_per_workload(monkeypatch, capsys):
    """bench_settings.main end to end, its measurements stubbed (they take minutes)."""
    from benchmarks import bench_settings
    seen = []

    def measure(flags, env, cpus, steps):
        seen.append((tuple(flags), env['MXNET_ENGINE_TYPE'], cpus))
        return {'imgs_per_s': 1000.0, 'loop_imgs_per_s': 900.0}
    monkeypatch.setattr(bench_settings, 'measure', measure)
    bench_settings.main(['--workloads', 'default', '--repeats', '1', '--steps', '1'])
    out = capsys.readouterr().out
    assert out.startswith('host: ') and '\ndefault: median images/s, step / train.py loop' in out
    assert len(seen) == 3 * len(bench_settings.settings(2))   # each setting in 3 situations


def test_the_update_benchmark_times_each_way_to_adam_in_one_process(op_library):
    done = subprocess.run([sys.executable, 'benchmarks/bench_update.py', '--rounds', '1',
                           '--steps', '2'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {line[:38].strip(): line[38:].split() for line in done.stdout.splitlines()
            if line.startswith(('gluon.Trainer', 'optim.Trainer '))}
    assert list(rows) == ['gluon.Trainer, mx.nd.stn_adam_update', 'gluon.Trainer, optim.invoke',
                          'optim.Trainer']
    assert all(float(row[0]) > 0 and float(row[5]) > 0 for row in rows.values())
    assert done.stdout.startswith('host: ') and 'rts-fcn, batch 64' in done.stdout


def test_the_layer_benchmark_times_the_cnn_baselines_own_convolutions():
    """bench_layers.py's layers are the RTS CNN's two convolutions (each with the input
    net.cnn gives it) and the TC CNN's first, at the widths train.py fits."""
    from stngluon import compat  # noqa: F401  (before mxnet)
    import mxnet as mx
    import net
    from benchmarks import bench_layers
    from stngluon.config import RunConfig
    layers = list(bench_layers.layers().values())
    for (shape, filters, kernel, pad), (dataset, k) in zip(layers, [('rts', 0), ('rts', 2),
                                                                      ('tc', 0)]):
        config = RunConfig(dataset=dataset, model='cnn', transform='none').resolved()
        cnn = net.cnn(width=config.width)
        cnn.initialize()
        x = mx.nd.zeros((bench_layers.BATCH, *config.image_shape))
        for layer in cnn[:k]:
            x = layer(x)
        conv = cnn[k]
        assert shape == x.shape and filters == conv._channels
        assert (kernel, pad) == (conv._kwargs['kernel'][0], conv._kwargs['pad'][0])


def test_the_layer_benchmark_prints_a_row_per_layer():
    """One fresh process per framework and precision; a missing one reads 'failed'."""
    done = subprocess.run([sys.executable, 'benchmarks/bench_layers.py', '--repeats', '1',
                           '--steps', '1'], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(('rts ', 'tc '))]
    assert len(rows) == 3
    for row in rows:   # MXNet's float32 always; bfloat16 and PyTorch where the host has them
        assert float(row[32:].split()[0]) > 0


needs_two_cores_and_cc = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 or not (shutil.which('cc') or shutil.which('gcc')),
    reason='the link is between two cores, and core_link.c needs a C compiler')


@needs_two_cores_and_cc
def test_the_link_probe_times_a_round_trip_between_two_cores_it_may_use():
    from benchmarks import core_link
    assert 10 < core_link.round_trip_ns(0.05) < 1e6   # nanoseconds
    with pytest.raises(ValueError, match='may not use'):
        core_link.round_trip_ns(0.01, cores=(0, max(os.sched_getaffinity(0)) + 1))


@needs_two_cores_and_cc
def test_the_link_benchmark_prints_the_round_trips_it_timed():
    result = subprocess.run([sys.executable, 'benchmarks/core_link.py', '--seconds', '1',
                             '--every', '0.25'], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    *_, trips, summary = result.stdout.splitlines()
    trips = [float(t) for t in trips.split()]   # each timed for 0.25 s at least
    assert 1 <= len(trips) <= 4 and all(t > 0 for t in trips)
    assert summary.startswith('min ') and f'of {len(trips)} at 1.5x the fastest' in summary
