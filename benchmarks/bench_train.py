"""Benchmark: training images/s of train.py's networks, beside the identical PyTorch networks.

    python benchmarks/bench_train.py                        # every Table 1 model kind, on 1 and all cores
    python benchmarks/bench_train.py --side-by-side         # and one single-threaded process per core
    python benchmarks/bench_train.py --workloads default,rts-st-cnn-affine --cores 2 --repeats 5
    python benchmarks/bench_train.py --workloads rts-cnn,tc-cnn --precision bfloat16
    python benchmarks/bench_train.py --workloads default --cores 2 --busy   # a core kept busy

Every measurement runs in a fresh process, held to the first N usable cores (as taskset
would: a host with N cores). stn-gluon runs at its defaults there: the engine, wait policy
and OpenMP thread count that train.py would choose for that network on such a host
(runtime.py: timed once per host, then cached; the environment's where it sets them); the
sampler is the one train.py would run (sampler.py). PyTorch runs at its own defaults, a
thread per core (OMP_NUM_THREADS where the environment sets it). The step (forward,
backward, optimizer update on a batch already in memory) is timed after --warmup steps in
rounds of --steps steps until a second has gone (a slow network's single round may take
longer), and so is train.py's own loop (``engine.GluonModel.fit_epoch``, feeding
included), as the rate it reports in metrics.csv, in passes over as many random images as
--steps steps take or a second's worth if more (up to 20,000), after one untimed pass; a
process times its columns --rounds times in turn and gives their medians and the median of
the loop's ratio to the step round by round. The two frameworks alternate, workload by
workload, repeat by repeat, and the table gives the median images/s of the repeats, the
peak resident memory of each process, the loop against the step (the median of the
repeats'), and the ratio stn-gluon / PyTorch: the median of each repeat's ratio (its two
processes run one after the other, so that a drift of the host's speed over the minutes
between repeats cancels out of it), with their range. The PyTorch twins (same layers, same parameter count, which is
checked; the same Adam with the localisation at --loc-lr-mult's rate) are
timed when torch imports (pip install -r requirements-bench.txt); they are not needed
otherwise.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root
from benchmarks.workloads import (ENVIRON, ROOT, ROUNDS, SECONDS, TABLE1_KINDS,  # noqa: E402
                                  WORKLOADS, config_of, host, medians, peak_mb, resolved,
                                  time_steps)



def measure_torch(flags, warmup, steps, rounds=ROUNDS, wait_policy=None):
    args = config_of(flags)
    # PyTorch gets the wait policy the environment had (``wait_policy``), its own default
    # unless the user set one.
    if wait_policy is None:
        os.environ.pop('OMP_WAIT_POLICY', None)
    else:
        os.environ['OMP_WAIT_POLICY'] = wait_policy
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
    data = torch.tensor(rng.rand(args.batch_size, 1, side, side), dtype=torch.float32)
    label = torch.tensor(rng.randint(0, 10, args.batch_size))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        loss_fn(model(data), label).backward()
        optimizer.step()
    model.train()
    for _ in range(warmup):   # once; the rounds start warm
        step()
    rate = medians({'step': lambda: time_steps(step, args.batch_size, 0, steps, lambda: None)},
                   rounds)['step']
    return {'imgs_per_s': rate, 'params': sum(p.numel() for p in model.parameters()),
            'peak_mb': peak_mb(), 'version': f'PyTorch {torch.__version__}'}


def label(settings):
    """'Naive ACTIVE x2', 'Threaded PASSIVE x1', or 'environment'."""
    from stngluon import runtime
    return runtime.label(settings) if settings else 'environment'


def first_cores(count):
    """The first ``count`` cores this process may use."""
    return sorted(os.sched_getaffinity(0))[:count]


def child(framework, flags, cores, warmup, steps, rounds, settings=None, threads=None):
    """One measurement in a fresh process on the first ``cores`` usable cores (stn-gluon's
    with ``settings``, a dict of environment variables; on ``threads`` OpenMP threads if
    given); its JSON result, or None if it failed."""
    from stngluon import runtime
    env = runtime.with_threads(ENVIRON, threads) if threads else dict(ENVIRON)
    if framework == 'mxnet' and settings:
        env.update(settings, **{runtime.CHOSEN: '1'})
    extra = f', wait_policy={ENVIRON.get("OMP_WAIT_POLICY")!r}' if framework == 'torch' else ''
    module = 'workloads' if framework == 'mxnet' else 'bench_train'
    code = (f'import sys, json; sys.path.insert(0, {ROOT!r}); from benchmarks import {module} as b; '
            f'print(json.dumps(b.measure_{framework}({flags!r}, {warmup}, {steps}, {rounds}{extra})))')
    cpus = first_cores(cores)
    result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                            timeout=900, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if result.returncode != 0:
        print(f'  {framework} {" ".join(flags)} on {cores} core(s) failed:\n{result.stderr[-2000:]}',
              file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def side_by_side(flags, cores, warmup, steps, rounds, settings):
    """Total images/s of ``cores`` single-threaded stn-gluon processes training at once
    (the Table 1 grid's cells side by side), or None if one failed."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(cores) as pool:
        runs = list(pool.map(lambda _: child('mxnet', flags, cores, warmup, steps, rounds,
                                             settings, threads=1), range(cores)))
    return None if None in runs else sum(r['imgs_per_s'] for r in runs)


def torch_available():
    return subprocess.run([sys.executable, '-c', 'import torch'], capture_output=True).returncode == 0


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workloads', default=','.join(TABLE1_KINDS),
                   help=f'comma-separated, of: {", ".join(WORKLOADS)} (default: one per '
                        f'Table 1 model kind)')
    p.add_argument('--cores', default=None,
                   help='comma-separated counts of usable cores to time on (default: 1 and all)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--rounds', type=int, default=ROUNDS,
                   help='rounds of each timing in a measuring process, in turn (median)')
    p.add_argument('--no-torch', action='store_true', help='time stn-gluon only')
    p.add_argument('--precision', choices=['auto', 'float32', 'bfloat16'], default='auto',
                   help='train.py\'s --precision for stn-gluon (PyTorch stays float32)')
    p.add_argument('--busy', action='store_true',
                   help='with another process spinning on the last usable core throughout (a '
                        'busy machine): the settings chosen and both frameworks timed beside it')
    p.add_argument('--side-by-side', action='store_true',
                   help='also time one single-threaded process per core at once (total images/s) '
                        'against one process with a thread per core')
    return p


@contextlib.contextmanager
def spinning_on(core):
    """Another process spinning on ``core`` while the block runs (a busy machine)."""
    spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'],
                               preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()


def measure_all(args, workloads, counts, frameworks, flags, settings, cores):
    """{(workload, cores, framework): [each repeat's result]} and {(workload, 'side'):
    [total images/s]}, the frameworks alternating within each repeat."""
    results = {}
    for repeat in range(args.repeats):
        for workload in workloads:
            for n in counts:
                for framework in frameworks:
                    r = child(framework, flags[workload], n, args.warmup, args.steps,
                              args.rounds, settings[(workload, n)])
                    if r:
                        results.setdefault((workload, n, framework), []).append(
                            dict(r, repeat=repeat))
            if args.side_by_side:
                total = side_by_side(flags[workload], cores, args.warmup, args.steps,
                                     args.rounds, settings[(workload, 'side')])
                if total:
                    results.setdefault((workload, 'side'), []).append(total)
    return results


def paired(results, workload, t):
    """The ratios stn-gluon / PyTorch of each repeat that timed both, in order: the two
    processes of a repeat run one after the other."""
    torch = {r['repeat']: r['imgs_per_s'] for r in results.get((workload, t, 'torch'), [])}
    return [r['imgs_per_s'] / torch[r['repeat']]
            for r in results.get((workload, t, 'mxnet'), []) if r['repeat'] in torch]


def table_row(workload, t, frameworks, results, settings):
    """One line of the table: medians, peak MB, the loop against the step (the median of
    each round's ratio), the ratio (the median of each repeat's) and its range."""
    row = f'{workload:20s} {t:7d} {label(settings[(workload, t)]):>19s}'
    for framework in frameworks:
        runs = results.get((workload, t, framework))
        if not runs:
            row += f' {"failed":>16s}' + (f' {"":13s} {"":9s}' if framework == 'mxnet' else '')
            continue
        rate = statistics.median(r['imgs_per_s'] for r in runs)
        row += f' {rate:8,.0f} ({max(r["peak_mb"] for r in runs):4.0f})'
        if framework == 'mxnet':
            loop = statistics.median(r['loop_imgs_per_s'] for r in runs)
            row += f' {loop:13,.0f} {statistics.median(r["loop_per_step"] for r in runs):9.2f}'
    ratios = paired(results, workload, t)
    if ratios:
        row += f' {statistics.median(ratios):6.2f} {min(ratios):5.2f}-{max(ratios):4.2f}'
        mx_params = results[(workload, t, 'mxnet')][0]['params']
        torch_params = results[(workload, t, 'torch')][0]['params']
        if mx_params != torch_params:
            row += f'  (parameters differ: {mx_params:,d} against {torch_params:,d})'
    return row


def print_table(workloads, counts, frameworks, results, settings):
    versions = sorted({r[0]['version'] for key, r in results.items() if key[1] != 'side'})
    samplers = sorted({f'{r[0]["sampler"]} on {key[1]} core(s)' for key, r in results.items()
                       if key[1] != 'side' and key[2] == 'mxnet'})
    layers = sorted(f'{r[0]["input_dense"]} ({key[0]}, {key[1]} core(s))'
                    for key, r in results.items()
                    if key[1] != 'side' and key[2] == 'mxnet' and r[0].get('input_dense'))
    print(', '.join(versions) + '; PyTorch at its own defaults; cores: usable cores (affinity); '
          'stn-gluon\'s settings: engine, wait policy x OpenMP threads; its sampler: '
          + ', '.join(samplers)
          + ('; the FCN\'s input layer (STN_INPUT_DENSE): ' + ', '.join(layers) if layers else ''))
    header = (f'{"workload":20s} {"cores":>7s} {"settings":>19s} {"stn-gluon":>16s} '
              f'{"train.py loop":>13s} {"loop/step":>9s}')
    print(header + (f' {"PyTorch":>16s} {"ratio":>6s} {"range":>10s}' if 'torch' in frameworks
                    else ''))
    for workload in workloads:
        for t in counts:
            print(table_row(workload, t, frameworks, results, settings), flush=True)


def print_side_by_side(workloads, results, cores):
    print(f'\n{cores} single-threaded processes at once against one on {cores} cores '
          f'(stn-gluon, total images/s, median):')
    for workload in workloads:
        side, one = results.get((workload, 'side')), results.get((workload, cores, 'mxnet'))
        if side and one:
            side, one = statistics.median(side), statistics.median(r['imgs_per_s'] for r in one)
            print(f'{workload:20s} {side:8,.0f} against {one:8,.0f}: {side / one:.2f}x')


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    workloads = args.workloads.split(',')
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f'unknown workloads {unknown}; choose from {", ".join(WORKLOADS)}')
    cores = len(os.sched_getaffinity(0))
    counts = [int(n) for n in args.cores.split(',')] if args.cores else sorted({1, cores})
    if any(not 1 <= n <= cores for n in counts):
        p.error(f'--cores: this process may use 1 to {cores} cores')
    if args.side_by_side and cores not in counts:
        counts.append(cores)
    if args.busy and cores < 2:
        p.error('--busy: it keeps the last usable core busy, and this process may use only one')
    frameworks = ['mxnet'] + ([] if args.no_torch or not torch_available() else ['torch'])
    last = first_cores(cores)[-1]
    with spinning_on(last) if args.busy else contextlib.nullcontext():
        if args.busy:
            print(f'another process spins on core {last} throughout', flush=True)
        bench(args, workloads, counts, frameworks, cores)


def bench(args, workloads, counts, frameworks, cores):
    from stngluon import runtime
    print(f'host: {host()}', flush=True)
    flags = resolved(workloads, args.precision)
    in_bfloat16 = [w for w in workloads if flags[w][flags[w].index('--precision') + 1] == 'bfloat16']
    if in_bfloat16:
        print(f'stn-gluon\'s classifier in bfloat16 (train.py --precision {args.precision}'
              + (' on this CPU' if args.precision == 'auto' else '') + '): '
              + ', '.join(in_bfloat16) + '; PyTorch in float32', flush=True)
    print('the execution settings train.py chooses (timed once per host, network and busy cores, '
          'cached)...', flush=True)
    given = ENVIRON.get('OMP_NUM_THREADS')   # the environment's thread count, else chosen
    settings = {(w, n): runtime.chosen_for(flags[w], given, ENVIRON, first_cores(n))
                for w in workloads for n in counts}
    if args.side_by_side:
        settings.update({(w, 'side'): runtime.chosen_for(flags[w], 1, ENVIRON) for w in workloads})
    print(f'{args.repeats} repeats; each: {args.warmup} steps, then rounds of {args.steps} until '
          f'{SECONDS:g} s have gone, {args.rounds} times (the step and the loop in turn); '
          f'frameworks alternating; median images/s (peak MB)', flush=True)
    results = measure_all(args, workloads, counts, frameworks, flags, settings, cores)
    print_table(workloads, counts, frameworks, results, settings)
    if args.side_by_side:
        print_side_by_side(workloads, results, cores)


if __name__ == '__main__':
    main()
