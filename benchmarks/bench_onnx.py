"""Benchmark: inference images/s of a run's network in MXNet and in ONNX Runtime.

    python export_onnx.py --model result && python benchmarks/bench_onnx.py --model result

Both read the same export (MXNet: ``gluon.SymbolBlock.imports``, hybridized; ONNX
Runtime: RUN_DIR/model.onnx, its CPU provider), on the same random batches; the two
alternate, each batch size ``--repeats`` times, and the median is printed. Both use
the cores this process may use (OMP_NUM_THREADS for MXNet, intra-op threads for ONNX
Runtime). With --dataset it first prints both runtimes' test accuracy.
"""
import argparse
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root
from stngluon import runtime  # noqa: E402
runtime.configure()   # OpenMP threads and wait policy, before MXNet loads
from stngluon import compat  # noqa: E402,F401  (the numpy shim, before mxnet)
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402

from stngluon import distort, rundir  # noqa: E402
from benchmarks import workloads  # noqa: E402


def images_per_s(run, x, seconds):
    """Images/s of ``run(x)``, repeated for at least ``seconds`` after one warm-up call."""
    run(x)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(x)
        count += 1
    return count * len(x) / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='result', help='run folder with the export and model.onnx')
    p.add_argument('--batch-sizes', default='1,64,1000')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--seconds', type=float, default=1.0, help='per measurement')
    p.add_argument('--dataset', default=None, help='also print the test accuracy on this set')
    p.add_argument('--data-dir', default=None)
    args = p.parse_args(argv)
    threads = runtime.threads()
    print(f'host: {workloads.host()}; MXNet {mx.__version__}, ONNX Runtime {onnxruntime.__version__}')
    symbol, weights, symbol_file, params_file = rundir.load_export(args.model)
    shape = rundir.input_shape(symbol, weights, os.path.dirname(symbol_file))
    with warnings.catch_warnings():   # "Cannot decide type for ... data": it is float32
        warnings.simplefilter('ignore', UserWarning)
        net = mx.gluon.SymbolBlock.imports(symbol_file, ['data'], params_file)
    net.hybridize(static_alloc=True, static_shape=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(os.path.join(args.model, rundir.ONNX), options,
                                           providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    runs = {'MXNet': lambda x: net(mx.nd.array(x)).asnumpy(),
            'ONNX Runtime': lambda x: session.run(None, {name: x})[0]}   # logits
    if args.dataset:
        data = distort.load_dataset(args.dataset, args.data_dir)
        x, y = data.test_x, data.test_y
        classes = {}
        for framework, run in runs.items():
            classes[framework] = np.concatenate([run(x[i:i + 1000]).argmax(1)
                                                  for i in range(0, len(x), 1000)])
            correct = int((classes[framework] == y).sum())
            print(f'{framework:13s} {args.dataset} test accuracy {correct / len(y):.4f} '
                  f'({correct}/{len(y)})')
        same = int((classes['MXNet'] == classes['ONNX Runtime']).sum())
        print(f'the same class for {same} of {len(y)} test images')
    print(f'{threads} threads; median of {args.repeats} alternating measurements; images/s')
    print(f'{"batch":>6s} {"MXNet":>10s} {"ONNX Runtime":>13s} {"ratio":>6s}')
    rng = np.random.RandomState(0)
    for batch in (int(b) for b in args.batch_sizes.split(',')):
        x = rng.rand(batch, *shape).astype(np.float32)
        measured = {k: [] for k in runs}
        for _ in range(args.repeats):
            for framework, run in runs.items():
                measured[framework].append(images_per_s(run, x, args.seconds))
        ours, theirs = (statistics.median(measured[k]) for k in runs)
        print(f'{batch:6d} {ours:10,.0f} {theirs:13,.0f} {theirs / ours:6.2f}')


if __name__ == '__main__':
    main()
