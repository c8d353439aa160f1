"""Benchmark: train.py's step with Adam in one call reached three ways, in turn.

    python benchmarks/bench_update.py                          # the RTS FCN, at train.py's settings
    taskset -c 0 python benchmarks/bench_update.py --rounds 30 # on one core
    python benchmarks/bench_update.py --workload default       # STN + LeNet

One model (benchmarks/workloads.py's flags for the workload, train.py's execution settings
for them: runtime.py) trains on one batch of random images, its update reached round by
round (so that a slow spell of the host weighs on every way) through
``gluon.Trainer`` and MXNet's generated ``mx.nd.stn_adam_update`` function (as before
optim.invoke), ``gluon.Trainer`` and ``optim.invoke``, and ``optim.Trainer`` (train.py's).
Prints the median milliseconds per step (forward, backward, update) and the CPU time the
Python thread spends in ``Trainer.step``, which on one core the step waits for.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root
from benchmarks.workloads import WORKLOADS, config_of, host, with_resolved  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workload', default='rts-fcn', choices=sorted(WORKLOADS))
    p.add_argument('--rounds', type=int, default=20)
    p.add_argument('--steps', type=int, default=400, help='timed steps a round, each way')
    args = p.parse_args(argv)
    from stngluon import runtime
    runtime.configure()
    config = config_of(with_resolved([args.workload])[args.workload])
    settings = runtime.settle(config.network_name, config.flags(), input_dense=config.input_dense)
    from stngluon import compat  # noqa: F401  (before mxnet)
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from stngluon import distort, engine, optim
    shape = (config.batch_size, *distort.image_shape(config.dataset))
    model = engine.GluonModel(config, (config.batch_size * 10, *shape[1:]), mx.cpu())
    rng = np.random.RandomState(0)
    data = mx.nd.array(rng.rand(*shape))
    label = mx.nd.array(rng.randint(0, distort.num_classes(config.dataset), shape[0]))

    invoke = optim.invoke

    def generated(name, inputs, out, **attrs):
        getattr(mx.nd, name)(*inputs, out=list(out), **attrs)

    def steps(way, count):
        """``count`` steps with the update reached ``way``; its Python CPU a step, in us."""
        model.trainer.__class__, optim.invoke = way
        cpu = 0.0
        for _ in range(count):
            with autograd.record():
                loss = model.batch_loss(data, label)
            loss.backward()
            start = time.thread_time()
            model.trainer.step(shape[0])
            cpu += time.thread_time() - start
        mx.nd.waitall()
        return cpu / count * 1e6

    ways = {'gluon.Trainer, mx.nd.stn_adam_update': (gluon.Trainer, generated),
            'gluon.Trainer, optim.invoke': (gluon.Trainer, invoke),
            'optim.Trainer': (optim.Trainer, invoke)}
    times, update_cpu = {name: [] for name in ways}, {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            steps(way, 20)   # warm
            start = time.perf_counter()
            update_cpu[name].append(steps(way, args.steps))
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    print(f'host: {host()}')
    print(f'{args.workload}, batch {shape[0]}, {runtime.label(settings)}, MXNet {mx.__version__}; '
          f'{args.rounds} rounds of {args.steps} steps each way, medians')
    for name in ways:
        print(f'{name:38s} {statistics.median(times[name]):7.3f} ms a step, Trainer.step '
              f'{statistics.median(update_cpu[name]):6.1f} us of Python-thread CPU')
    first, *_, last = ways
    ratio = statistics.median(times[first]) / statistics.median(times[last])
    print(f'{last}: {ratio:.3f}x the steps per second of {first}')


if __name__ == '__main__':
    main()
