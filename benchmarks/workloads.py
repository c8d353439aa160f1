"""The benchmarks' workloads (train.py's networks by name), each framework's training step
on them, and the MXNet side of a measurement: bench_train.py, bench_settings.py and
core_link.py time these, each in fresh processes."""
import json
import os
import statistics
import subprocess
import sys
import time

from stngluon import ROOT
# The environment as given: the children get it, not what runtime.configure() may add to
# this process's, so that train.py's choice is theirs to make.
ENVIRON = dict(os.environ)

# name -> train.py flags: one per Table 1 model kind, then larger batches
WORKLOADS = {
    'default': [],
    'rts-fcn': ['--dataset', 'rts', '--model', 'fcn', '--no-stn'],
    'rts-st-fcn-affine': ['--dataset', 'rts', '--model', 'fcn', '--transform', 'affine'],
    'rts-cnn': ['--dataset', 'rts', '--model', 'cnn', '--no-stn'],
    **{f'rts-st-cnn-{family}': ['--dataset', 'rts', '--model', 'cnn', '--transform', family]
       for family in ('affine', 'attention', 'projective', 'tps')},
    'tc-cnn': ['--dataset', 'tc', '--model', 'cnn', '--no-stn'],
    **{f'rts-st-cnn-{family}-b256': ['--dataset', 'rts', '--model', 'cnn', '--transform', family,
                                     '--batch-size', '256']
       for family in ('affine', 'attention', 'projective', 'tps')},
}
TABLE1_KINDS = [w for w in WORKLOADS if not w.endswith('-b256')]


def environment(framework, settings=None, threads=None):
    """The environment of a measuring process: the one given (ENVIRON), on ``threads``
    OpenMP threads if given; stn-gluon's ('mxnet') with ``settings`` (a dict of environment
    variables: what train.py chose) marked as chosen, so that it chooses nothing itself."""
    from stngluon import runtime
    env = runtime.with_threads(ENVIRON, threads) if threads else dict(ENVIRON)
    if framework == 'mxnet' and settings:
        env.update(settings, **{runtime.CHOSEN: '1'})
    return env


def peak_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def config_of(flags):
    """The RunConfig of train.py's run flags ``flags``, its width fitted unless given."""
    from stngluon.config import RunConfig
    return RunConfig.from_flags(flags).resolved()


# How long each column is timed: at least SECONDS (a scheduler's time slice would weigh on
# the 40 ms that 50 steps of the FCN take), at least --steps steps; the loop's set of random
# images is at most LOOP_IMAGES (memory), passed over again until the time is up. A measuring
# process times its columns ROUNDS times in turn and reports the medians.
SECONDS, LOOP_IMAGES, ROUNDS = 1.0, 20_000, 3


# What a measuring process that takes turns with another prints before each timed round
# (take_turn); bench_train.py keeps it stopped until its turn comes.
TURN = 'turn'


def take_turn():
    """Say on stdout that a timed round is next and wait for the go on stdin."""
    print(TURN, flush=True)
    if not sys.stdin.readline():
        sys.exit('the benchmark that started this measuring process is gone')


def in_turn(timers, rounds=ROUNDS, before=lambda: None):
    """{name: [each round's value]} of ``rounds`` calls of each timer(), the timers called
    in turn, round by round, each after ``before()``: a slow spell of the host weighs on
    one round of each, not on one column."""
    runs = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            before()
            runs[name].append(timer())
    return runs


def medians(timers, rounds=ROUNDS):
    """{name: the median of ``rounds`` calls of timer()}, the timers called in turn."""
    return {name: statistics.median(values) for name, values in in_turn(timers, rounds).items()}


def paired_median(numerators, denominators):
    """The median of the ratios of values timed side by side (the same round or repeat):
    a drift of the host's speed between rounds cancels out of each ratio, where it would
    stay in a ratio of two medians."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def time_steps(step, batch, warmup, steps, sync):
    """Images/s of ``step()`` on batches of ``batch`` after ``warmup`` steps: rounds of
    ``steps`` steps, each ended by ``sync()``, until SECONDS have gone."""
    for _ in range(warmup):
        step()
    sync()
    start, done = time.perf_counter(), 0
    while True:
        for _ in range(steps):
            step()
        sync()
        done += steps
        took = time.perf_counter() - start
        if took >= SECONDS:
            return done * batch / took


def mxnet_step(flags):
    """(step, batch shape, sync, model): stn-gluon's training step on a random batch for the
    network of train.py's ``flags`` as train.py's loop runs it (the network and its loss in
    one call, then the update), in this process, which must not have loaded MXNet yet;
    ``sync()`` waits for the steps given; ``model``: the engine.GluonModel."""
    from stngluon import runtime
    runtime.configure()   # before MXNet loads
    from stngluon import compat  # noqa: F401  (the numpy shim, before mxnet)
    import mxnet as mx
    import numpy as np
    from mxnet import autograd

    from stngluon import distort
    from stngluon import engine
    args = config_of(flags)
    shape = (args.batch_size, *distort.image_shape(args.dataset))
    model = engine.GluonModel(args, (args.batch_size * 10, *shape[1:]), mx.cpu())
    rng = np.random.RandomState(0)
    data, label = mx.nd.array(rng.rand(*shape)), mx.nd.array(rng.randint(0, 10, shape[0]))

    def step():
        with autograd.record():
            loss = model.batch_loss(data, label)
        loss.backward()
        model.trainer.step(shape[0])
    return step, shape, mx.nd.waitall, model


def torch_step(flags):
    """(step, batch shape, sync, model): the PyTorch twin's training step on a random batch
    for the network of train.py's ``flags`` (Adam, the localisation at its rate), in this
    process, on a thread per usable core (OMP_NUM_THREADS where set)."""
    args = config_of(flags)
    import numpy as np
    import torch
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', len(os.sched_getaffinity(0)))))
    from benchmarks import twins   # torch, in the measuring process only
    model, side = twins.twin(args)
    local = [p for n, p in model.named_parameters() if n.startswith('stn.')]
    rest = [p for n, p in model.named_parameters() if not n.startswith('stn.')]
    optimizer = torch.optim.Adam([{'params': rest},
                                  {'params': local, 'lr': args.lr * args.loc_lr_mult}], lr=args.lr)
    rng = np.random.RandomState(0)
    shape = (args.batch_size, 1, side, side)
    data = torch.tensor(rng.rand(*shape), dtype=torch.float32)
    label = torch.tensor(rng.randint(0, 10, args.batch_size))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        loss_fn(model(data), label).backward()
        optimizer.step()
    model.train()
    return step, shape, lambda: None, model


def measure_mxnet(flags, warmup, steps, rounds=ROUNDS, turns=False):
    """stn-gluon's step and train.py's loop on the network of train.py's ``flags``, timed in
    turn ``rounds`` times (with ``turns``, each round when bench_train.py gives the turn)."""
    step, shape, sync, model = mxnet_step(flags)
    import mxnet as mx
    import numpy as np

    from stngluon import sampler
    rng = np.random.RandomState(1)
    rate = time_steps(step, shape[0], warmup, steps, sync)   # warm now: sizes the loop
    # train.py's own loop (engine.GluonModel.fit_epoch: batches taken from the set in
    # memory, the loss summed and checked), as train.py reports it, on as many images as
    # --steps steps take or about SECONDS' worth if more (at most LOOP_IMAGES), passed over
    # until SECONDS have gone: an epoch's set-up weighs on a short one as it does not on
    # train.py's epochs of 60,000. One pass first, untimed, as train.py's first epoch makes
    # the loop's buffers.
    images = max(steps, min(int(rate * SECONDS), LOOP_IMAGES) // shape[0]) * shape[0]
    x = rng.rand(images, *shape[1:]).astype(np.float32)
    y = rng.randint(0, 10, len(x)).astype(np.int32)
    model.fit_epoch(1, x, y)

    def loop():
        start, seen = time.perf_counter(), 0
        while time.perf_counter() - start < SECONDS:
            model.fit_epoch(2, x, y)
            seen += images
        return seen / (time.perf_counter() - start)
    runs = in_turn({'step': lambda: time_steps(step, shape[0], 0, steps, sync),
                    'loop': loop}, rounds, take_turn if turns else lambda: None)
    return {'imgs_per_s': statistics.median(runs['step']), 'step_rounds': runs['step'],
            'loop_imgs_per_s': statistics.median(runs['loop']),
            'loop_per_step': paired_median(runs['loop'], runs['step']),   # round by round
            'params': model.num_params, 'peak_mb': peak_mb(), 'version': f'MXNet {mx.__version__}',
            'sampler': sampler.name(), 'input_dense': model.input_dense}


def with_resolved(workloads, precision='auto'):
    """{workload: its train.py flags with --precision ``precision`` as train.py resolves it
    (auto: config.auto_precision) and with --width where one was fitted}."""
    flags = {}
    for workload in workloads:
        config = config_of(WORKLOADS[workload] + ['--precision', precision])
        flags[workload] = (WORKLOADS[workload] + ['--precision', config.precision]
                           + (['--width', str(config.width)] if config.width else []))
    return flags


def resolved(workloads, precision='auto'):
    """``with_resolved``, worked out in a process of its own: measuring processes must run no
    MXNet operator but their own (an idle OpenMP thread of MXNet's spins, runtime.DEFAULT,
    and would slow whatever else that process runs)."""
    code = (f'import sys, json; sys.path.insert(0, {ROOT!r}); from benchmarks import workloads as b; '
            f'print(json.dumps(b.with_resolved({workloads!r}, {precision!r})))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            check=True, env=dict(ENVIRON, OMP_NUM_THREADS='1'))
    return json.loads(result.stdout.strip().splitlines()[-1])


def host():
    """The machine, for the header: CPU model, the instruction sets that matter to these
    kernels, usable cores, and the execution settings the environment sets (each row
    names the engine and wait policy its stn-gluon processes ran with)."""
    from stngluon import runtime
    model, isa = runtime.cpu()
    cores = len(os.sched_getaffinity(0))
    settings = ', '.join(f'{k}={ENVIRON.get(k, default)}' for k, default in (
        ('MXNET_ENGINE_TYPE', 'per row (runtime.py)'),
        ('OMP_WAIT_POLICY', 'per row (runtime.py)'),
        ('OMP_NUM_THREADS', 'chosen per row')))
    return f'{model} ({", ".join(isa)}), {cores} usable cores of {os.cpu_count()}; {settings}'
