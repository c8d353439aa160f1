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
the loop's ratio to the step round by round. A repeat's two processes, stn-gluon's and
PyTorch's, run at once and take turns, round by round (stn-gluon's step, PyTorch's step,
stn-gluon's loop), the one not timing stopped: a round's two steps are timed within
seconds of each other, in one spell of the host (on some hosts the two cores' link is 3x
slower for seconds at a time, which moves two-thread rates by a quarter: docs/speed.md).
The table gives the median images/s of the repeats, the peak resident memory of each
process, the loop against the step (the median of the repeats'), and the ratio stn-gluon
/ PyTorch: the median of the rounds' ratios of the steps, with their range. The PyTorch
twins (same layers, same parameter count, which is checked; the same Adam with the
localisation at --loc-lr-mult's rate) are timed when torch imports (pip install -r
requirements-bench.txt); they are not needed otherwise.
"""
import argparse
import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root
from benchmarks.workloads import (ENVIRON, ROOT, ROUNDS, SECONDS, TABLE1_KINDS,  # noqa: E402
                                  TURN, WORKLOADS, environment, host, in_turn, peak_mb,
                                  resolved, take_turn, time_steps, torch_step)



def measure_torch(flags, warmup, steps, rounds=ROUNDS, turns=False, wait_policy=None):
    """The PyTorch twin's step, timed ``rounds`` times (with ``turns``, each round when
    given the turn, as measure_mxnet)."""
    # PyTorch gets the wait policy the environment had (``wait_policy``), its own default
    # unless the user set one.
    if wait_policy is None:
        os.environ.pop('OMP_WAIT_POLICY', None)
    else:
        os.environ['OMP_WAIT_POLICY'] = wait_policy
    import torch
    step, shape, sync, model = torch_step(flags)
    for _ in range(warmup):   # once; the rounds start warm
        step()
    rates = in_turn({'step': lambda: time_steps(step, shape[0], 0, steps, sync)},
                    rounds, take_turn if turns else lambda: None)['step']
    return {'imgs_per_s': statistics.median(rates), 'step_rounds': rates,
            'params': sum(p.numel() for p in model.parameters()), 'peak_mb': peak_mb(),
            'version': f'PyTorch {torch.__version__}'}


def label(settings):
    """'Naive ACTIVE x2', 'Threaded PASSIVE x1', or 'environment'."""
    from stngluon import runtime
    return runtime.label(settings) if settings else 'environment'


def first_cores(count):
    """The first ``count`` cores this process may use."""
    return sorted(os.sched_getaffinity(0))[:count]


def measuring(framework, flags, cores, warmup, steps, rounds, settings=None, threads=None,
              turns=False):
    """(command, environment, cores) of a process that measures ``framework`` on the first
    ``cores`` usable cores (stn-gluon's with ``settings``, a dict of environment variables;
    on ``threads`` OpenMP threads if given) and prints its JSON result last."""
    env = environment(framework, settings, threads)
    extra = f', wait_policy={ENVIRON.get("OMP_WAIT_POLICY")!r}' if framework == 'torch' else ''
    module = 'workloads' if framework == 'mxnet' else 'bench_train'
    code = (f'import sys, json; sys.path.insert(0, {ROOT!r}); from benchmarks import {module} as b; '
            f'print(json.dumps(b.measure_{framework}({flags!r}, {warmup}, {steps}, {rounds}, '
            f'{turns!r}{extra})))')
    return [sys.executable, '-c', code], env, first_cores(cores)


def child(framework, flags, cores, warmup, steps, rounds, settings=None, threads=None):
    """One measurement in a fresh process (``measuring``); its JSON result, or None if it
    failed."""
    command, env, cpus = measuring(framework, flags, cores, warmup, steps, rounds, settings,
                                   threads)
    result = subprocess.run(command, env=env, capture_output=True, text=True,
                            timeout=900, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if result.returncode != 0:
        print(f'  {framework} {" ".join(flags)} on {cores} core(s) failed:\n{result.stderr[-2000:]}',
              file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


class TurnTaker:
    """A measuring process started with ``turns`` (workloads.take_turn), kept stopped
    (SIGSTOP) but in its turns: ``turn()`` lets it time its next round."""

    def __init__(self, framework, command, env, cpus, timeout=900):
        self.framework, self.timeout, self.result = framework, timeout, None
        self.errors = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.errors, bufsize=0,
                                        preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        self.pending = b''
        self.wait()   # its set-up and warm-up, alone

    def wait(self):
        """Until it is at its next turn (True) or has ended (its result read; False); then
        it is stopped."""
        while True:
            while b'\n' not in self.pending:
                ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
                chunk = os.read(self.process.stdout.fileno(), 65536) if ready else b''
                if not chunk:   # it ended, or said nothing for ``timeout`` seconds
                    return self.end()
                self.pending += chunk
            line, self.pending = self.pending.split(b'\n', 1)
            if line.decode().strip() == TURN:
                self.process.send_signal(signal.SIGSTOP)
                return True
            with contextlib.suppress(ValueError):   # its result is the last line it prints
                self.result = json.loads(line)

    def turn(self):
        """Let it time one round; False once it has ended."""
        if self.process.poll() is not None:
            return False
        self.process.send_signal(signal.SIGCONT)
        try:
            self.process.stdin.write(b'\n')
        except BrokenPipeError:
            return self.end()
        return self.wait()

    def end(self):
        self.process.send_signal(signal.SIGCONT)
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.result is None:
            self.errors.seek(0)
            print(f'  {self.framework} failed:\n{self.errors.read().decode()[-2000:]}',
                  file=sys.stderr)
        return False

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.errors.close()


def taking_turns(flags, cores, warmup, steps, rounds, settings):
    """stn-gluon's and PyTorch's measuring processes on the same cores at once, taking
    turns round by round (each round: stn-gluon's step, PyTorch's, stn-gluon's loop; the
    process not timing stopped): each round's pair of steps is timed seconds apart, in
    one spell of the host. {'mxnet': result, 'torch': result}, None for one that failed."""
    takers = {}
    try:
        for framework in ('mxnet', 'torch'):   # set up one after the other
            takers[framework] = TurnTaker(framework, *measuring(
                framework, flags, cores, warmup, steps, rounds, settings, turns=True))
        ours, theirs = takers['mxnet'], takers['torch']
        for _ in range(rounds):
            for taker in (ours, theirs, ours):
                taker.turn()
        for taker in takers.values():   # each prints its result after its last round
            while taker.turn():
                pass
        return {framework: taker.result for framework, taker in takers.items()}
    finally:
        for taker in takers.values():
            taker.close()


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
    [total images/s]}, the frameworks taking turns within each repeat."""
    results = {}
    for repeat in range(args.repeats):
        for workload in workloads:
            for n in counts:
                if 'torch' in frameworks:
                    runs = taking_turns(flags[workload], n, args.warmup, args.steps,
                                        args.rounds, settings[(workload, n)])
                else:
                    runs = {'mxnet': child('mxnet', flags[workload], n, args.warmup,
                                           args.steps, args.rounds, settings[(workload, n)])}
                for framework, r in runs.items():
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
    """The ratios stn-gluon / PyTorch of the steps of each round of each repeat that timed
    both, in order: the two processes of a repeat took turns, round by round."""
    torch = {r['repeat']: r['step_rounds'] for r in results.get((workload, t, 'torch'), [])}
    return [ours / theirs for r in results.get((workload, t, 'mxnet'), []) if r['repeat'] in torch
            for ours, theirs in zip(r['step_rounds'], torch[r['repeat']], strict=True)]


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
          f'the frameworks taking turns round by round; median images/s (peak MB)', flush=True)
    results = measure_all(args, workloads, counts, frameworks, flags, settings, cores)
    print_table(workloads, counts, frameworks, results, settings)
    if args.side_by_side:
        print_side_by_side(workloads, results, cores)


if __name__ == '__main__':
    main()
