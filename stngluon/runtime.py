"""How this process runs MXNet's operators, chosen by measurement on the host it runs on.

Three settings decide how fast the same network trains on a CPU, and which is faster
depends on the host, the network and what else runs there (measured:
docs/execution_settings.txt):

    MXNET_ENGINE_TYPE   ThreadedEnginePerDevice (MXNet's default: operators run on an
                        engine thread) or NaiveEngine (they run in the calling thread)
    OMP_WAIT_POLICY     ACTIVE (idle OpenMP threads spin) or PASSIVE (they sleep)
    OMP_NUM_THREADS     one thread per usable core, or one (a network whose operators
                        take microseconds, the FCN, loses more to waking threads than
                        it gains from them)

A network whose first layer reads the input image (the FCN baseline: net.InputDense) has a
fourth, chosen the same way after the other three:

    STN_INPUT_DENSE     library (the operator library's stn_input_dense) or builtin
                        (MXNet's FullyConnected, oneDNN): which is faster depends on
                        the CPU (on a Zen 4 the library's, on AVX2 loops oneDNN's)

Engine and wait policy change no result: for a given OpenMP thread count every
candidate trains the same weights; another thread count sums in another order (the
last bits differ), and config.json records the count. ``choose`` times the candidates
on the run's own network (a short training loop on random data, each in a fresh
process, a few seconds in all; the two fastest once more, in turn) the first time a
network kind trains on a host, and keeps the fastest in the user's cache folder, per
host (CPU model and instruction sets, usable cores, MXNet version, the training loop's
version) and network kind, and per load: where the thread count is chosen on more than
one core, the cores other programs keep busy when the run starts (``busy_cores``) are part
of what a choice holds for, since spinning threads that share a core with another program
run several times slower than one thread; later runs read it. The engine or wait policy
set in the environment wins over the choice (and skips the measurement); OMP_NUM_THREADS set there
fixes the thread count, and the other two are chosen for it; STN_INPUT_DENSE set there
wins over the choice of the input layer (unset, and nothing chosen: builtin).
A process of a distributed run (DMLC_ROLE set) keeps the threaded engine: the
parameter server's requests need it.
"""
import json
import os
import subprocess
import sys
import time

from stngluon import ROOT, atomic

ENGINE, WAIT, THREADS = 'MXNET_ENGINE_TYPE', 'OMP_WAIT_POLICY', 'OMP_NUM_THREADS'
ENGINES = ('ThreadedEnginePerDevice', 'NaiveEngine')
# where nothing is measured: MXNet's engine, spinning threads (a thread per core)
DEFAULT = {ENGINE: ENGINES[0], WAIT: 'ACTIVE'}
DENSE, DENSES = 'STN_INPUT_DENSE', ('library', 'builtin')
CHOSEN = 'STN_SETTINGS_CHOSEN'   # set in a process that runs with its chosen settings
# A wait policy or thread count set by ``configure`` or chosen, not by the user, is listed in
# STN_DEFAULTED, which child processes inherit with it: for them it is not given either, and
# their choice stays theirs.
DEFAULTED = 'STN_DEFAULTED'
BUSY = 'STN_BUSY_CORES'          # given: how many cores to take as busy (else measured)
BUSY_SEEN = 'STN_BUSY_SEEN'      # set by ``settle``: the busy cores its choice was for
PROC_STAT = '/proc/stat'         # each core's time: busy, idle


def configure():
    """Every script calls this first, before MXNet loads (OpenMP reads its variables then):
    one OpenMP thread per core this process may use (the PyPI MXNet runs its operators on
    one thread unless told otherwise), and the spinning wait policy (DEFAULT), where the
    environment sets none; ``settle`` may then run a script on what it measured faster
    (one thread, another engine or policy). OMP_NUM_THREADS and OMP_WAIT_POLICY in the
    environment win. Results repeat exactly for a given thread count and differ slightly
    between thread counts (sums are taken in another order); config.json records the count
    a run used. Returns that count."""
    for name, value in ((WAIT, DEFAULT[WAIT]), (THREADS, str(len(os.sched_getaffinity(0))))):
        if name not in os.environ:
            os.environ[name] = value
            os.environ[DEFAULTED] = ','.join(sorted(_defaulted() | {name}))
    return threads()


def threads():
    """The OpenMP threads MXNet's operators run on in this process (OMP_NUM_THREADS)."""
    try:
        return int(os.environ.get('OMP_NUM_THREADS', '1'))
    except ValueError:
        raise SystemExit(f'error: OMP_NUM_THREADS={os.environ["OMP_NUM_THREADS"]!r} is not a '
                         f'whole number of threads: unset it (one per core) or set it to one') \
            from None


def _defaulted():
    return set(filter(None, os.environ.get(DEFAULTED, '').split(',')))


def given():
    """The execution settings the user's environment sets (``configure``'s defaults and
    earlier choices left out)."""
    return {k: os.environ[k] for k in (ENGINE, WAIT, THREADS)
            if k in os.environ and k not in _defaulted()}


def input_dense_library():
    """Whether net.InputDense computes with the operator library's ``stn_input_dense``
    (STN_INPUT_DENSE=library: chosen, or set by the user) rather than FullyConnected."""
    return os.environ.get(DENSE) == 'library'


def with_threads(environ, count):
    """A copy of ``environ`` for a child process that runs on ``count`` OpenMP threads, given
    (None: as many as the child chooses)."""
    env = dict(environ)
    env[DEFAULTED] = ','.join(sorted(set(filter(None, env.get(DEFAULTED, '').split(',')))
                                     - {THREADS}))
    if count is None:
        env.pop(THREADS, None)
    else:
        env[THREADS] = str(count)
    return env


def candidates():
    """The settings ``choose`` times: each engine (the threaded one only in a distributed
    process) with each wait policy on a thread per usable core, and each engine on one
    thread (where no thread waits); on the given thread count only, where OMP_NUM_THREADS
    is given."""
    engines = ENGINES[:1] if 'DMLC_ROLE' in os.environ else ENGINES
    cores = len(os.sched_getaffinity(0))
    counts = [threads()] if THREADS in given() else sorted({cores, 1}, reverse=True)
    return [{ENGINE: engine, WAIT: wait, THREADS: str(count)} for count in counts
            for engine in engines for wait in (('ACTIVE', 'PASSIVE') if count > 1 else ('PASSIVE',))]


def cache_path():
    """The cache file: $STN_SETTINGS_CACHE, else stn-gluon/settings.json in
    $XDG_CACHE_HOME (default ~/.cache)."""
    if os.environ.get('STN_SETTINGS_CACHE'):
        return os.environ['STN_SETTINGS_CACHE']
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'stn-gluon', 'settings.json')


def cpu():
    """(CPU model, the instruction sets that matter to MXNet's kernels) from /proc/cpuinfo:
    two hosts that both call themselves "AMD EPYC" may differ in AVX-512 and bfloat16, and
    in their generation (the model is named with its family and model numbers: 'AMD EPYC,
    family 25 model 17' is a Zen 4, family 26 a Zen 5)."""
    fields = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if not line.strip():   # the first processor's fields only
                    break
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model, flags = fields.get('model name', 'unknown CPU'), set(fields.get('flags', '').split())
    if 'cpu family' in fields and 'model' in fields:
        model += f', family {fields["cpu family"]} model {fields["model"]}'
    isa = [name for name, flag in (('AVX2', 'avx2'), ('AVX-512', 'avx512f'),
                                   ('AVX-512 bf16', 'avx512_bf16'), ('AMX', 'amx_tile'))
           if flag in flags] or ['no AVX2']
    return model, isa


def bfloat16_native():
    """Whether this CPU computes bfloat16 natively (AVX-512 bf16): train.py's --precision
    bfloat16 needs it."""
    return 'AVX-512 bf16' in cpu()[1]


CHANNEL_BLOCK = 'STN_CHANNEL_BLOCK'


def channel_block():
    """The multiple of channels the CNN's convolutions compute with on a CPU
    (net.PaddedChannels): 16 where the CPU has AVX-512 (MXNet 1.9.1's oneDNN runs its
    AVX-512 convolutions on channels in 16s only, and its AVX2 or gemm ones, half as fast,
    on the CNN's 36-44 filters otherwise), 8 with AVX2 (its AVX2 kernels' block), else 1.
    $STN_CHANNEL_BLOCK wins (1: the channels as they are). The same function and initial
    weights either way; results differ in the rounding between blocks, as between hosts."""
    if os.environ.get(CHANNEL_BLOCK):
        try:
            block = int(os.environ[CHANNEL_BLOCK])
        except ValueError:
            block = 0
        if block < 1:
            raise SystemExit(f'error: {CHANNEL_BLOCK}={os.environ[CHANNEL_BLOCK]!r} is not a '
                             f'whole number of channels >= 1: unset it (chosen by the CPU) '
                             f'or set it to 1, 8 or 16')
        return block
    isa = cpu()[1]
    return 16 if 'AVX-512' in isa else 8 if 'AVX2' in isa else 1


# The training loop the choices were timed on: raised whenever engine.GluonModel.fit_epoch's
# work per batch changes (or the operators it runs, as the sampler on one thread), so that a
# choice timed on an older loop is timed again.
LOOP_VERSION = 6


def host_key():
    """What a choice holds for: CPU model and instruction sets, usable cores, OpenMP
    threads (where given; else they are chosen), MXNet version, the CNN's channel block
    (channel_block), the loop's version (LOOP_VERSION)."""
    from importlib.metadata import version
    model, isa = cpu()
    count = f'{threads()} threads' if THREADS in given() else 'threads chosen'
    return (f'{model} ({", ".join(isa)}) | {len(os.sched_getaffinity(0))} cores | '
            f'{count} | mxnet {version("mxnet")} | channels in {channel_block()}s | '
            f'loop {LOOP_VERSION}')


def busy_cores(seconds=0.15, samples=2):
    """How many of this process's usable cores other processes keep busy, in whole cores
    (rounded): the busy share of those cores' time in /proc/stat (all but idle and iowait;
    the hypervisor's steal counts as busy) over ``samples`` spells of ``seconds``, this
    process asleep meanwhile, the least of them (a moment's work of another program is not
    a busy core); 0 where /proc/stat (PROC_STAT) cannot be read. $STN_BUSY_CORES, a whole
    number, wins."""
    cpus = os.sched_getaffinity(0)
    if os.environ.get(BUSY):
        try:
            given_ = int(os.environ[BUSY])
        except ValueError:
            given_ = -1
        if given_ < 0:
            raise SystemExit(f'error: {BUSY}={os.environ[BUSY]!r} is not a whole number of '
                             f'cores >= 0: unset it (measured when a run starts) or set it to '
                             f'the cores other programs keep busy')
        return min(given_, len(cpus))

    def times():   # {cpu: (busy ticks, all ticks)} for the usable cores
        out = {}
        with open(PROC_STAT) as f:
            for line in f:
                name, *fields = line.split()
                if name[:3] == 'cpu' and name[3:].isdigit() and int(name[3:]) in cpus:
                    ticks = [int(v) for v in fields[:8]]
                    out[name] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
        return out
    shares = []
    try:
        for _ in range(samples):
            before = times()
            time.sleep(seconds)
            after = times()
            spent = sum(after[c][1] - before[c][1] for c in after)
            shares.append(len(after) * sum(after[c][0] - before[c][0] for c in after) / spent
                          if spent else 0.0)
    except (OSError, ValueError, KeyError):
        return 0
    return min(int(min(shares) + 0.5), len(cpus))


def situation():
    """The busy cores (``busy_cores``) where they decide the choice, the thread count chosen
    on more than one usable core; else None (not measured)."""
    if THREADS in given() or len(os.sched_getaffinity(0)) < 2:
        return None
    return busy_cores()


def read_cache(path):
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}   # none yet, or damaged: measured again and rewritten
    return cache if isinstance(cache, dict) else {}


def choose(network, measure, log=print, measure_dense=None, busy=None):
    """The settings (a dict of ENGINE, WAIT and THREADS) for training ``network`` (a name of
    its kind) here: {} when the environment sets the engine or wait policy, else the cached
    choice for this host, network and ``busy`` cores (None: ``situation()``'s; 0: none),
    else the fastest of ``candidates()`` by ``measure(settings) -> images/s`` (timed in the
    situation at hand, cached). For a network with an InputDense layer,
    ``measure_dense(settings) -> {DENSE value: images/s}``: the choice then holds DENSE too,
    the faster on the settings chosen, unless the environment sets it or the operator
    library is missing."""
    if ENGINE in given() or WAIT in given():
        return {}
    candidates_ = candidates()
    dense = measure_dense is not None and DENSE not in os.environ and _library_built()
    busy = situation() if busy is None else busy
    while_busy = f'{busy} of {len(os.sched_getaffinity(0))} cores busy' if busy else ''
    key = f'{host_key()} | {network}' + (f' | {while_busy}' if while_busy else '')
    path = cache_path()
    cached = read_cache(path).get(key)
    if isinstance(cached, dict):
        settings = {k: v for k, v in cached.items() if k != DENSE}
        if settings in candidates_ and (not dense or cached.get(DENSE) in DENSES):
            return cached if dense else settings
    log(f'timing {len(candidates_)} execution settings on {network} (once for this host'
        + (f' with {while_busy} by other programs' if while_busy else '') + f'; kept in {path})')
    rates = [(measure(c), k) for k, c in enumerate(candidates_)]
    if max(rates)[0] <= 0:   # nothing could be timed: MXNet's own settings, not kept
        log('  no candidate could be timed; using MXNet\'s defaults')
        return DEFAULT
    # A slow spell of the host can fall on one timing: the two fastest are timed again, in
    # turn, and each keeps its better timing.
    for rate, k in sorted(rates, reverse=True)[:2 if len(rates) > 1 else 0]:
        rates[k] = (max(rate, measure(candidates_[k])), k)
    best = candidates_[max(rates)[1]]
    log('  ' + ', '.join(f'{label(c)}: {rate:,.0f}' for (rate, _), c in zip(rates, candidates_))
        + ' images/s')
    if dense:
        rates = measure_dense(best)
        log('  the input layer: ' + ', '.join(f'{d}: {rates.get(d, 0):,.0f}' for d in DENSES)
            + ' images/s')
        faster = max(DENSES, key=lambda d: rates.get(d, 0))
        best = dict(best, **{DENSE: faster if rates.get(faster, 0) > 0 else 'builtin'})
    cache = read_cache(path)   # another run may have written its choice meanwhile
    cache[key] = best
    try:
        atomic.write_text(path, json.dumps(cache, indent=2, sort_keys=True) + '\n')
    except OSError as e:   # a read-only home: measured again next time
        log(f'  (not kept: {e.strerror or e})')
    return best


def _library_built():
    from stngluon import ops   # no MXNet: whether the library is there to load
    return ops.fresh(ops.library_path())


def label(settings):
    """'Threaded ACTIVE x2', 'Naive PASSIVE x1': engine, wait policy, OpenMP threads."""
    engine = settings[ENGINE].replace('EnginePerDevice', '').replace('Engine', '')
    return f'{engine} {settings[WAIT]}' + (f' x{settings[THREADS]}' if THREADS in settings else '')


def _in_child(code, settings, threads=None):
    """The JSON value the last line of Python ``code`` prints, run in a fresh process with
    the execution ``settings`` (on ``threads`` OpenMP threads if given), after the preamble
    every measuring process runs; None if that process fails."""
    preamble = (f'import sys, json; sys.path.insert(0, {ROOT!r}); from stngluon import runtime; '
                f'runtime.configure(); from stngluon.config import RunConfig; ')
    env = dict(os.environ, **settings, **{CHOSEN: '1'})
    if threads is not None:
        env = with_threads(env, threads)
    try:
        done = subprocess.run([sys.executable, '-c', preamble + code], env=env,
                              capture_output=True, text=True, timeout=300)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, OSError, ValueError, IndexError):
        return None


def measure_in_child(flags, seconds=1.5, threads=None):
    """``measure`` for ``choose``: images/s of train.py's loop on ``flags``' network in a
    fresh process with the candidate settings (0 if that process fails), on ``threads``
    OpenMP threads if given."""
    def measure(settings):
        rate = _in_child(f'print(runtime.loop_rate(RunConfig.from_flags({flags!r}).resolved(), '
                         f'{seconds}))', settings, threads)
        return rate if isinstance(rate, float) else 0.0   # 0: could not be timed, not chosen
    return measure


def measure_dense_in_child(flags, seconds=3.0):
    """``measure_dense`` for ``choose``: ``input_dense_rates`` of ``flags``' network in a fresh
    process with the given settings ({} if that process fails)."""
    def measure(settings):
        return _in_child(f'print(json.dumps(runtime.input_dense_rates('
                         f'RunConfig.from_flags({flags!r}).resolved(), {seconds})))',
                         settings) or {}
    return measure


def chosen_for(flags, threads, environ=None, cpus=None):
    """The settings train.py would run ``flags``' network with on ``threads`` OpenMP threads
    (None: as many as it chooses) here, or on the cores ``cpus`` only, with the load they
    carry now (``choose``: cached, or timed now), asked of a fresh process with ``environ``
    (default os.environ) so that this one loads no MXNet with other settings."""
    env = with_threads(environ or os.environ, threads)
    code = (f'import sys, json; sys.path.insert(0, {ROOT!r}); from stngluon import runtime; '
            f'runtime.configure(); from stngluon.config import RunConfig; '
            f'c = RunConfig.from_flags({flags!r}); '
            f'print(json.dumps(runtime.choose(c.network_name, runtime.measure_in_child(c.flags()), '
            f'log=lambda *_: None, measure_dense=runtime.measure_dense_in_child(c.flags()) '
            f'if c.resolved().input_dense else None)))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    if done.returncode != 0:
        raise RuntimeError(f'could not choose the settings for {" ".join(flags)}: '
                           f'{done.stderr.strip()[-1000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


LOOP_IMAGES = None   # loop_rate's largest set; None: a training epoch (mnist.TRAIN_IMAGES)


def loop_rate(args, seconds):
    """Images/s of ``engine.GluonModel.fit_epoch`` on random images of the run's shape
    (``args`` with its width resolved), after a warm-up, over about ``seconds``: on a set
    doubled from 8 batches until one pass takes ``seconds / 2`` or the set is an epoch
    (LOOP_IMAGES), then passes over that epoch until ``seconds / 2`` have gone (a fast network
    on a large canvas would otherwise need gigabytes of images)."""
    from stngluon import compat  # noqa: F401  (before mxnet)
    import mxnet as mx
    import numpy as np

    from stngluon import distort
    from stngluon import engine
    from stngluon import mnist   # numpy: not imported before configure() has run
    epoch = LOOP_IMAGES or mnist.TRAIN_IMAGES
    shape = distort.image_shape(args.dataset)
    model = engine.GluonModel(args, (args.batch_size * 8, *shape), mx.cpu())
    rng = np.random.default_rng(0)
    batches = 8
    while True:
        count = min(batches * args.batch_size, epoch)
        x = rng.random((count, *shape), dtype=np.float32)
        y = rng.integers(0, distort.num_classes(args.dataset), count).astype(np.int32)
        model.fit_epoch(1, x[:2 * args.batch_size], y[:2 * args.batch_size])   # warm-up
        start, seen = time.perf_counter(), 0
        while True:   # one pass, or as many over a whole epoch as the time takes
            model.fit_epoch(2, x, y)
            seen += count
            took = time.perf_counter() - start
            if took >= seconds / 2 or count < epoch:
                break
        if took >= seconds / 2:
            return seen / took
        batches *= 2


def input_dense_rates(args, seconds, rounds=5):
    """{DENSE value: images/s of ``engine.GluonModel.fit_epoch``} for the run's network
    (``args``, resolved) with its InputDense layer computed each way, in this process: a
    model each, on one set of random images, their loops timed in turn for ``rounds``
    rounds of ``seconds / (2 rounds)`` each; the medians. Timed side by side, a difference of a
    few percent shows through the host's slow and fast spells."""
    from stngluon import compat  # noqa: F401  (before mxnet)
    import statistics

    import mxnet as mx
    import numpy as np

    from stngluon import distort
    from stngluon import engine
    shape = distort.image_shape(args.dataset)
    rng = np.random.default_rng(0)
    count = 32 * args.batch_size
    x = rng.random((count, *shape), dtype=np.float32)
    y = rng.integers(0, distort.num_classes(args.dataset), count).astype(np.int32)
    models = {}
    for dense in DENSES:   # InputDense reads DENSE when its graph is built: at the first batch
        os.environ[DENSE] = dense
        models[dense] = engine.GluonModel(args, (args.batch_size * 8, *shape), mx.cpu())
        models[dense].fit_epoch(1, x, y)   # warm-up
    rates = {dense: [] for dense in DENSES}
    for _ in range(rounds):
        for dense, model in models.items():
            start, seen = time.perf_counter(), 0
            while time.perf_counter() - start < seconds / (2 * rounds):
                model.fit_epoch(2, x, y)
                seen += count
            rates[dense].append(seen / (time.perf_counter() - start))
    return {dense: statistics.median(r) for dense, r in rates.items()}


def settle(network, flags, log=print, input_dense=False):
    """In a script's main, before it trains: if the chosen settings differ from this
    process's, run the script again in their place with them (os.execve; MXNet reads
    them when it loads). ``input_dense``: the network has an InputDense layer. The choice is
    for the cores other programs keep busy now (``situation``), which $STN_BUSY_SEEN passes
    on for config.json. Returns the settings this process runs with."""
    if os.environ.get(CHOSEN):
        return {k: os.environ.get(k) for k in (ENGINE, WAIT, THREADS, DENSE)}
    busy = None if ENGINE in given() or WAIT in given() else situation()
    os.environ[BUSY_SEEN] = '' if busy is None else str(busy)   # for config.json
    chosen = choose(network, measure_in_child(flags), log,
                    measure_dense_in_child(flags) if input_dense else None, busy)
    current = {ENGINE: os.environ.get(ENGINE, DEFAULT[ENGINE]),
               WAIT: os.environ.get(WAIT, DEFAULT[WAIT]), THREADS: os.environ.get(THREADS),
               DENSE: os.environ.get(DENSE)}
    if any(current[k] != v for k, v in chosen.items()):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  dict(os.environ, **chosen, **{CHOSEN: '1'}))
    return current
