"""Benchmark: the CNN baselines' two convolutions alone, forward and backward, in MXNet
(float32 on the channels as they are, and as train.py computes them, padded to the CPU's
channel block, in float32 and bfloat16) and in PyTorch (float32).

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


def measure_mxnet(precision, block, steps, only):
    """{layer: ms} of the layer named ``only`` in MXNet, the channels padded to a multiple
    of ``block`` as train.py's CNN computes them (net.PaddedChannels; a later layer's input
    arrives padded)."""
    sys.path.insert(0, ROOT)
    import net
    from stngluon import compat  # noqa: F401  (before mxnet)
    import mxnet as mx
    from mxnet import autograd
    shape, filters, kernel, pad = layers()[only]
    later = shape[1] > 1   # a later layer: its input arrives padded, and its gradient is needed
    layer = net.PRECISIONS[precision][0](filters, kernel, padding=pad, block=block,
                                         padded_input=shape[1] if later else 0)
    layer.initialize()
    layer.hybridize(static_alloc=True, static_shape=True)
    if later:
        shape = (shape[0], shape[1] + -shape[1] % block, *shape[2:])
    x = mx.nd.random.uniform(shape=shape)
    if later:
        x.attach_grad()

    def step():
        with autograd.record():
            y = layer(x)
        y.backward()
        mx.nd.waitall()
    return {only: time_it(step, steps)}


def measure_torch(steps, only):
    import torch
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    shape, filters, kernel, pad = layers()[only]
    layer = torch.nn.Conv2d(shape[1], filters, kernel, padding=pad)
    x = torch.rand(shape, requires_grad=shape[1] > 1)
    return {only: time_it(lambda: layer(x).sum().backward(), steps)}


def child(what, steps, layer):
    """Measure ``layer`` in ``what`` ('torch', or (precision, block) in MXNet) in a fresh
    process (one layer a process: in one process, a layer measured after others ran up to
    three times slower)."""
    call = (f'measure_torch({steps}, {layer!r})' if what == 'torch'
            else f'measure_mxnet(*{what!r}, {steps}, {layer!r})')
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
    block = runtime.channel_block()
    kinds = [('float32', 1), ('float32', block), ('bfloat16', block), 'torch']
    runs = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            results = [child(kind, args.steps, layer) for layer in layers()]
            if all(results):
                runs[kind].append({k: v for r in results for k, v in r.items()})
    print(f'ms per forward and backward pass of a batch of 64, median of {args.repeats}')
    heads = ['MXNet float32', f'in {block}s', f'bfloat16, in {block}s', 'PyTorch float32']
    print(f'{"layer":32s} ' + ' '.join(f'{h:>16s}' for h in heads))
    for name in layers():
        cells = [f'{statistics.median(r[name] for r in runs[k]):.1f}' if runs[k] else 'failed'
                 for k in kinds]
        print(f'{name:32s} ' + ' '.join(f'{c:>16s}' for c in cells))


if __name__ == '__main__':
    main()
