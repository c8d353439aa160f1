"""Benchmark: the CNN baselines' two convolutions alone, forward and backward, in MXNet
(float32 and bfloat16, as train.py --precision runs them) and in PyTorch (float32).

    python benchmarks/bench_layers.py            # one thread
    OMP_NUM_THREADS=2 python benchmarks/bench_layers.py

Where the CNN baselines' step goes (docs/speed.md): milliseconds per batch of 64, median
of --repeats timings of --steps steps, each framework in a fresh process.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64


def layers():
    """{name: (input shape, filters, kernel, padding)}: the RTS CNN's two convolutions and the
    TC CNN's first, at the widths train.py fits them to (net.cnn, config.RunConfig)."""
    sys.path.insert(0, ROOT)
    import net
    from stngluon.config import RunConfig
    rts, tc = (RunConfig(dataset=d, model='cnn', transform='none').resolved()
               for d in ('rts', 'tc'))
    side = net.feature_side(rts.image_shape[-1], pooled=False)   # after conv 9x9 and pooling
    return {
        f'rts conv 9x9, 1->{rts.width}, {rts.image_shape[-1]}px':
            ((BATCH, *rts.image_shape), rts.width, 9, 0),
        f'rts conv 7x7, {rts.width}->{2 * rts.width}, {side}px':
            ((BATCH, rts.width, side, side), 2 * rts.width, 7, 2),
        f'tc conv 9x9, 1->{tc.width}, {tc.image_shape[-1]}px':
            ((BATCH, *tc.image_shape), tc.width, 9, 0)}


def time_it(step, steps):
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


def measure_mxnet(precision, steps):
    sys.path.insert(0, ROOT)
    import net
    from stngluon import compat  # noqa: F401  (before mxnet)
    import mxnet as mx
    from mxnet import autograd
    out = {}
    for name, (shape, filters, kernel, pad) in layers().items():
        layer = net.PRECISIONS[precision][0](filters, kernel, padding=pad)
        layer.initialize()
        layer.hybridize(static_alloc=True, static_shape=True)
        x = mx.nd.random.uniform(shape=shape)
        if shape[1] > 1:
            x.attach_grad()   # a later layer: its input's gradient is needed too

        def step():
            with autograd.record():
                y = layer(x)
            y.backward()
            mx.nd.waitall()
        out[name] = time_it(step, steps)
    return out


def measure_torch(steps):
    import torch
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    out = {}
    for name, (shape, filters, kernel, pad) in layers().items():
        layer = torch.nn.Conv2d(shape[1], filters, kernel, padding=pad)
        x = torch.rand(shape, requires_grad=shape[1] > 1)
        out[name] = time_it(lambda: layer(x).sum().backward(), steps)
    return out


def child(what, steps):
    call = f'measure_torch({steps})' if what == 'torch' else f'measure_mxnet({what!r}, {steps})'
    code = (f'import sys, json; sys.path.insert(0, {ROOT!r}); '
            f'from benchmarks import bench_layers as b; '
            f'print(json.dumps(b.{call}))')
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--steps', type=int, default=10)
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from stngluon import runtime
    model, isa = runtime.cpu()
    print(f'host: {model} ({", ".join(isa)}), {len(os.sched_getaffinity(0))} usable cores; '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "1")}, MXNet\'s engine and wait '
          f'policy as the environment sets them')
    kinds = ['float32', 'bfloat16', 'torch']
    runs = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            result = child(kind, args.steps)
            if result:
                runs[kind].append(result)
    print(f'ms per forward and backward pass of a batch of 64, median of {args.repeats}')
    print(f'{"layer":32s} {"MXNet float32":>14s} {"MXNet bfloat16":>15s} {"PyTorch float32":>16s}')
    for name in layers():
        cells = [f'{statistics.median(r[name] for r in runs[k]):.1f}' if runs[k] else 'failed'
                 for k in kinds]
        print(f'{name:32s} {cells[0]:>14s} {cells[1]:>15s} {cells[2]:>16s}')


if __name__ == '__main__':
    main()
