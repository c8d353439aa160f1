"""runtime.py: the engine, the OpenMP wait policy and thread count are measured once per
host and network kind, kept, reused, measured again on another host or MXNet version, and
never override what the environment sets."""
import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks.bench_train import spinning_on
from stngluon import rundir, runtime, sampler
from stngluon.config import RunConfig
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAIVE_PASSIVE = {runtime.ENGINE: 'NaiveEngine', runtime.WAIT: 'PASSIVE'}
FASTEST = {**NAIVE_PASSIVE, runtime.THREADS: '1'}   # Timer's


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache file of the test's own, two usable cores, none of them busy, and an
    environment that sets none of the settings."""
    path = tmp_path / 'settings.json'
    monkeypatch.setenv('STN_SETTINGS_CACHE', str(path))
    monkeypatch.setenv(runtime.BUSY, '0')
    for name in (runtime.ENGINE, runtime.WAIT, runtime.THREADS, runtime.DEFAULTED, runtime.DENSE,
                 'DMLC_ROLE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1})
    return path


class Timer:
    """A measure for runtime.choose: NaiveEngine with PASSIVE on one thread fastest; counts
    its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, settings):
        self.calls.append(settings)
        return 100 + 50 * (settings[runtime.ENGINE] == 'NaiveEngine') + 10 * (
            settings[runtime.WAIT] == 'PASSIVE') + 5 * (settings[runtime.THREADS] == '1')


def test_the_fastest_candidate_is_chosen_once_and_reused(cache):
    timer = Timer()
    assert runtime.choose('net', timer, log=lambda _: None) == FASTEST
    # each engine and wait policy on two threads, each engine on one (where nothing waits),
    # then the two fastest again
    assert len(runtime.candidates()) == 6 and len(timer.calls) == 6 + 2
    assert {c[runtime.THREADS] for c in timer.calls} == {'1', '2'}
    assert runtime.choose('net', timer, log=lambda _: None) == FASTEST   # from the cache
    assert len(timer.calls) == 8
    assert list(json.loads(cache.read_text()).values()) == [FASTEST]
    runtime.choose('another net', timer, log=lambda _: None)   # each network kind its own
    assert len(timer.calls) == 16


def test_the_two_fastest_are_timed_again_so_a_slow_spell_does_not_lose_the_fastest_the_choice(
        cache):
    timer = Timer()

    def measure(settings):   # the fastest's first timing falls in a slow spell of the host
        rate = timer(settings)
        return rate - 10 if settings == FASTEST and timer.calls.count(FASTEST) == 1 else rate
    assert runtime.choose('net', measure, log=lambda _: None) == FASTEST
    second = {**NAIVE_PASSIVE, runtime.THREADS: '2'}   # Timer's second fastest
    assert timer.calls[6:] == [second, FASTEST]   # the two fastest of the first timings


def test_a_thread_count_the_environment_gives_is_kept_and_the_rest_chosen_for_it(cache,
                                                                               monkeypatch):
    monkeypatch.setenv(runtime.THREADS, '2')
    timer = Timer()
    assert runtime.choose('net', timer, log=lambda _: None) == {**NAIVE_PASSIVE,
                                                                runtime.THREADS: '2'}
    assert len(timer.calls) == 4 + 2 and {c[runtime.THREADS] for c in timer.calls} == {'2'}


def test_on_one_usable_core_only_one_thread_is_timed(cache, monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0})
    timer = Timer()
    assert runtime.choose('net', timer, log=lambda _: None) == FASTEST
    assert len(timer.calls) == 2 + 2


def test_a_child_given_a_thread_count_keeps_it_though_the_parents_was_chosen(cache):
    runtime.configure()   # a script's own: its thread count not given, so chosen
    assert runtime.THREADS not in runtime.given()
    child = runtime.with_threads(os.environ, 1)
    assert child[runtime.THREADS] == '1' and runtime.THREADS not in child[runtime.DEFAULTED]
    assert runtime.THREADS not in runtime.with_threads(os.environ, None)


@pytest.mark.parametrize('change', ['cpu', 'instruction sets', 'mxnet', 'threads', 'cores',
                                    'channels', 'loop'])
def test_another_host_or_mxnet_version_or_thread_count_measures_again(cache, monkeypatch, change):
    monkeypatch.setattr(runtime, 'cpu', lambda: ('AMD EPYC', ['AVX2']))
    monkeypatch.delenv(runtime.CHANNEL_BLOCK, raising=False)
    timer = Timer()
    runtime.choose('net', timer, log=lambda _: None)
    if change == 'cpu':
        monkeypatch.setattr(runtime, 'cpu', lambda: ('Another CPU', ['AVX2']))
    elif change == 'instruction sets':   # the same model name, another generation
        monkeypatch.setattr(runtime, 'cpu', lambda: ('AMD EPYC', ['AVX2', 'AVX-512']))
    elif change == 'mxnet':
        monkeypatch.setattr('importlib.metadata.version', lambda name: '1.9.2')
    elif change == 'channels':   # the CNN's convolutions computed another way
        monkeypatch.setenv(runtime.CHANNEL_BLOCK, '1')
    elif change == 'cores':
        monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2, 3})
    elif change == 'loop':   # fit_epoch's work per batch changed
        monkeypatch.setattr(runtime, 'LOOP_VERSION', runtime.LOOP_VERSION + 1)
    else:   # given now, chosen before
        monkeypatch.setenv(runtime.THREADS, '2')
    first = len(timer.calls)
    runtime.choose('net', timer, log=lambda _: None)
    assert len(timer.calls) > first and len(json.loads(cache.read_text())) == 2


def test_a_choice_made_while_other_programs_keep_a_core_busy_is_kept_apart_from_the_idle_one(
        cache, monkeypatch):
    """Spinning threads that share a core with another program run several times slower than
    one thread: a run that starts while a core is busy times the settings as they run then,
    under a key of its own, and leaves the idle machine's choice as it was."""
    logged = []
    idle = runtime.choose('net', Timer(), log=lambda _: None)
    monkeypatch.setenv(runtime.BUSY, '1')

    def one_thread_fastest(settings):   # what the timings give with a core busy
        return 200 if settings == {runtime.ENGINE: 'ThreadedEnginePerDevice',
                                   runtime.WAIT: 'PASSIVE', runtime.THREADS: '1'} else 100
    busy = runtime.choose('net', one_thread_fastest, log=logged.append)
    assert busy[runtime.THREADS] == '1' and busy != idle
    assert 'with 1 of 2 cores busy by other programs' in logged[0]
    keys = list(json.loads(cache.read_text()))
    assert len(keys) == 2 and keys[1] == keys[0] + ' | 1 of 2 cores busy'
    timer = Timer()
    assert runtime.choose('net', timer, log=lambda _: None) == busy   # each from the cache
    monkeypatch.setenv(runtime.BUSY, '0')
    assert runtime.choose('net', timer, log=lambda _: None) == idle and timer.calls == []


def test_the_load_is_not_measured_where_the_thread_count_is_given_or_there_is_one_core(
        cache, monkeypatch):
    monkeypatch.delenv(runtime.BUSY)
    monkeypatch.setattr(runtime, 'busy_cores', lambda: pytest.fail('the load was measured'))
    monkeypatch.setenv(runtime.THREADS, '2')
    assert runtime.situation() is None
    monkeypatch.delenv(runtime.THREADS)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0})
    assert runtime.situation() is None


def proc_stat(*cores):
    """/proc/stat's text for cores given as (busy ticks, idle ticks): user, nice, system,
    idle, iowait, irq, softirq, steal, guest, guest_nice, the busy ticks split among user,
    system and steal, the idle ones between idle and iowait."""
    lines = ['cpu  0 0 0 0 0 0 0 0 0 0']
    for k, (busy, idle) in enumerate(cores):
        lines.append(f'cpu{k} {busy - busy // 2 - busy // 4} 0 {busy // 2} {idle - idle // 3} '
                     f'{idle // 3} 0 0 {busy // 4} 0 0')
    return '\n'.join(lines + ['intr 0', 'ctxt 0']) + '\n'


@pytest.mark.parametrize('readings, busy', [
    ([(0, 0), (0, 0), (0, 0)], 0),       # idle
    ([(0, 0), (15, 0), (30, 0)], 1),     # another program on core 0
    ([(0, 0), (15, 15), (30, 30)], 2),   # on both
    ([(0, 0), (8, 0), (16, 0)], 1),      # on half of a core: rounded up
    ([(0, 0), (4, 0), (8, 0)], 0),       # on a quarter of one: none
    ([(0, 0), (15, 0), (15, 0)], 0),     # busy in one spell only: a moment's work
])
def test_the_busy_cores_are_the_share_of_their_time_other_programs_take(
        tmp_path, monkeypatch, readings, busy):
    """Two usable cores timed over two spells of 15 ticks each: ``readings`` gives the busy
    ticks of core 0 and core 1 since the start, at the start and after each spell."""
    monkeypatch.delenv(runtime.BUSY, raising=False)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1})
    stat = tmp_path / 'stat'
    monkeypatch.setattr(runtime, 'PROC_STAT', str(stat))
    spells = iter(enumerate(readings))

    def next_reading(_=None):   # a spell passes while busy_cores sleeps
        k, (busy0, busy1) = next(spells)
        stat.write_text(proc_stat((busy0, 15 * k - busy0), (busy1, 15 * k - busy1)))
    next_reading()
    monkeypatch.setattr(runtime.time, 'sleep', next_reading)
    assert runtime.busy_cores(samples=2) == busy


def test_the_busy_cores_given_win_and_a_bad_value_says_what_to_set(monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1})
    monkeypatch.setattr(runtime, 'PROC_STAT', '/nonexistent/stat')
    monkeypatch.delenv(runtime.BUSY, raising=False)
    assert runtime.busy_cores() == 0   # nothing to read: taken as idle
    monkeypatch.setenv(runtime.BUSY, '1')
    assert runtime.busy_cores() == 1
    monkeypatch.setenv(runtime.BUSY, '5')
    assert runtime.busy_cores() == 2   # at most the usable cores
    for bad in ('one', '-1'):
        monkeypatch.setenv(runtime.BUSY, bad)
        with pytest.raises(SystemExit, match='STN_BUSY_CORES.*whole number of cores'):
            runtime.busy_cores()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason='needs two usable cores')
def test_a_program_spinning_on_one_of_two_cores_makes_one_busy_core(monkeypatch):
    """The real /proc/stat, with a process spinning on one of this process's cores."""
    monkeypatch.delenv(runtime.BUSY, raising=False)
    two = sorted(os.sched_getaffinity(0))[:2]
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(two))
    with spinning_on(two[1]):
        time.sleep(0.2)   # started and spinning
        assert runtime.busy_cores() >= 1


def test_the_cpu_is_named_with_its_generation(monkeypatch):
    """Two hosts that both call themselves "AMD EPYC", with the same instruction sets, are
    a Zen 4 and a Zen 5: named apart, each times its own choice."""
    import io

    def cpuinfo(family, model):
        text = (f'processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\n'
                f'model\t\t: {model}\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f '
                f'avx512_bf16\n\nprocessor\t: 1\ncpu family\t: 99\n')
        return lambda path: io.StringIO(text)
    monkeypatch.setattr(runtime, 'open', cpuinfo(25, 17), raising=False)
    zen4 = runtime.cpu()
    assert zen4 == ('AMD EPYC, family 25 model 17', ['AVX2', 'AVX-512', 'AVX-512 bf16'])
    monkeypatch.setattr(runtime, 'open', cpuinfo(26, 2), raising=False)
    assert runtime.cpu()[0] == 'AMD EPYC, family 26 model 2' != zen4[0]


def test_the_environment_wins_and_nothing_is_measured(cache, monkeypatch):
    monkeypatch.setenv(runtime.WAIT, 'ACTIVE')
    timer = Timer()
    assert runtime.choose('net', timer) == {} and timer.calls == [] and not cache.exists()


def test_a_wait_policy_set_by_configure_is_not_given_to_child_processes():
    """A script that called runtime.configure() (which sets OMP_WAIT_POLICY for MXNet)
    starts train.py: the child still makes its own choice; one the user set stays given."""
    code = ('import os, subprocess, sys; from stngluon import runtime; runtime.configure(); '
            'print(subprocess.run([sys.executable, "-c", "from stngluon import runtime; '
            'runtime.configure(); print(sorted(runtime.given()))"], capture_output=True, '
            'text=True, check=True).stdout.strip())')
    env = {k: v for k, v in os.environ.items() if k not in (runtime.WAIT, runtime.ENGINE,
                                                              runtime.THREADS, runtime.DEFAULTED)}
    child = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert child == '[]'
    child = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                           text=True, check=True, env=dict(env, OMP_WAIT_POLICY='PASSIVE'))
    assert child.stdout.strip() == "['OMP_WAIT_POLICY']"


def test_a_distributed_process_keeps_the_threaded_engine(cache, monkeypatch):
    monkeypatch.setenv('DMLC_ROLE', 'worker')
    timer = Timer()
    chosen = runtime.choose('net', timer, log=lambda _: None)
    assert chosen[runtime.ENGINE] == 'ThreadedEnginePerDevice'
    assert all(c[runtime.ENGINE] != 'NaiveEngine' for c in timer.calls)


@pytest.mark.parametrize('text', ['{"a": ', '[1]'])
def test_a_damaged_cache_is_measured_again_and_rewritten(cache, text):
    cache.write_text(text)
    timer = Timer()
    assert runtime.choose('net', timer, log=lambda _: None) == FASTEST
    assert len(timer.calls) == 8 and list(json.loads(cache.read_text()).values()) == [FASTEST]


class DenseTimer:
    """A measure_dense for runtime.choose: ``faster`` the faster input layer (none where
    ``faster`` is None: the measuring process failed); records the settings it was given."""

    def __init__(self, faster):
        self.faster, self.calls = faster, []

    def __call__(self, settings):
        self.calls.append(settings)
        return {d: 100 + 10 * (d == self.faster) for d in runtime.DENSES} if self.faster else {}


@pytest.mark.parametrize('faster', runtime.DENSES)
def test_a_network_with_an_input_layer_chooses_its_operator_on_the_chosen_settings_once(
        cache, monkeypatch, faster):
    monkeypatch.setattr(runtime, '_library_built', lambda: True)
    timer, dense = Timer(), DenseTimer(faster)
    chosen = runtime.choose('fcn', timer, log=lambda _: None, measure_dense=dense)
    assert chosen == {**FASTEST, runtime.DENSE: faster} and dense.calls == [FASTEST]
    assert runtime.choose('fcn', timer, log=lambda _: None, measure_dense=dense) == chosen
    assert len(dense.calls) == 1 and len(timer.calls) == 8   # from the cache
    # a network without one: no choice of it, and a choice with it is not taken for one without
    assert runtime.choose('net', timer, log=lambda _: None) == FASTEST
    assert len(dense.calls) == 1


def test_an_input_layer_that_could_not_be_timed_is_mxnets(cache, monkeypatch):
    monkeypatch.setattr(runtime, '_library_built', lambda: True)
    chosen = runtime.choose('fcn', Timer(), log=lambda _: None, measure_dense=DenseTimer(None))
    assert chosen[runtime.DENSE] == 'builtin'


def test_the_input_layer_is_not_chosen_where_the_environment_sets_it_or_the_library_is_missing(
        cache, monkeypatch):
    dense = DenseTimer('library')
    monkeypatch.setattr(runtime, '_library_built', lambda: False)
    assert runtime.choose('fcn', Timer(), log=lambda _: None, measure_dense=dense) == FASTEST
    monkeypatch.setattr(runtime, '_library_built', lambda: True)   # built since: timed now
    assert runtime.choose('fcn', Timer(), log=lambda _: None, measure_dense=dense)[
        runtime.DENSE] == 'library'
    monkeypatch.setenv(runtime.DENSE, 'builtin')
    timer = Timer()
    assert runtime.choose('fcn 2', timer, log=lambda _: None, measure_dense=dense) == FASTEST
    assert runtime.choose('fcn', timer, log=lambda _: None, measure_dense=dense) == FASTEST
    assert len(dense.calls) == 1 and len(timer.calls) == 8   # the cached settings, as they are


def test_the_input_layers_two_operators_are_timed_on_the_runs_network(op_library):
    rates = runtime.input_dense_rates(RunConfig(model='fcn', transform='none', width=8,
                                                batch_size=16), 0.1, rounds=2)
    assert set(rates) == set(runtime.DENSES) and min(rates.values()) > 0


def test_nothing_timed_is_mxnets_defaults_and_not_kept(cache):
    assert runtime.choose('net', lambda settings: 0.0, log=lambda _: None) == runtime.DEFAULT
    assert not cache.exists()


def test_the_loop_rate_is_measured_on_the_runs_network():
    config = RunConfig(model='fcn', width=8, batch_size=16)
    assert runtime.loop_rate(config, 0.05) > 0


def test_the_loop_rate_repeats_an_epoch_rather_than_growing_the_set_past_it(monkeypatch):
    from stngluon import engine
    passes, fit_epoch = [], engine.GluonModel.fit_epoch

    def recorded(model, epoch, x, y):
        passes.append((epoch, len(x)))
        return fit_epoch(model, epoch, x, y)
    monkeypatch.setattr(engine.GluonModel, 'fit_epoch', recorded)
    monkeypatch.setattr(runtime, 'LOOP_IMAGES', 48)   # an 'epoch' of 3 batches of 16
    assert runtime.loop_rate(RunConfig(model='fcn', width=8, batch_size=16), 0.2) > 0
    timed = [n for epoch, n in passes if epoch == 2]
    assert passes[0] == (1, 32) and len(timed) > 1 and set(timed) == {48}


@needs_mnist
def test_train_py_runs_with_the_cached_choice_and_records_it(tmp_path):
    """The cached choice (as if measured) is the one train.py trains with: it runs itself
    again with it, says so in its header and records it in config.json."""
    cache = tmp_path / 'settings.json'
    env = {k: v for k, v in os.environ.items() if k not in (runtime.ENGINE, runtime.WAIT)}
    env['STN_SETTINGS_CACHE'] = str(cache)
    key = f'{runtime.host_key()} | STN (affine) + LeNet on mnist, batch 64'
    assert 'threads chosen' in key
    cache.write_text(json.dumps({key: FASTEST}))
    out = tmp_path / 'run'
    done = subprocess.run([sys.executable, 'train.py', '--data-dir', REAL_DIR, '--out', str(out),
                           '--train-size', '200', '--epochs', '1'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'timing' not in done.stdout   # read, not measured
    assert 'NaiveEngine, OpenMP 1 threads PASSIVE' in done.stdout
    assert rundir.read_config(str(out))['execution'] == {
        'engine': 'NaiveEngine', 'omp_wait_policy': 'PASSIVE', 'omp_threads': 1,
        'sampler': sampler.name(), 'channel_block': 1,   # the library's where built; LeNet pads nothing
        'input_dense': None,   # LeNet's first layer is a convolution
        'busy_cores': 0}   # chosen for an idle machine (conftest: STN_BUSY_CORES=0)


@needs_mnist
def test_train_py_trains_the_fcn_with_the_input_layer_chosen_and_records_it(tmp_path, op_library):
    cache = tmp_path / 'settings.json'
    env = {k: v for k, v in os.environ.items()
           if k not in (runtime.ENGINE, runtime.WAIT, runtime.DENSE)}
    env['STN_SETTINGS_CACHE'] = str(cache)
    key = f'{runtime.host_key()} | FCN on mnist, batch 64'
    cache.write_text(json.dumps({key: {**FASTEST, runtime.DENSE: 'library'}}))
    out = tmp_path / 'run'
    done = subprocess.run([sys.executable, 'train.py', '--data-dir', REAL_DIR, '--out', str(out),
                           '--model', 'fcn', '--no-stn', '--train-size', '200', '--epochs', '1'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'timing' not in done.stdout and 'input layer stn_input_dense' in done.stdout
    assert rundir.read_config(str(out))['execution']['input_dense'] == 'stn_input_dense'
