"""Benchmark: train.py's step and loop under each execution setting, idle and loaded.

    python bench_settings.py                # 2 repeats, the default and RTS ST-CNN networks
    python bench_settings.py --repeats 3

Each measurement is ``workloads.measure_mxnet`` in a fresh process with the setting's
MXNET_ENGINE_TYPE, OMP_WAIT_POLICY and OMP_NUM_THREADS, in three situations: every core
idle, one core (``taskset``), and every core with another process spinning on the last
one. runtime.py chooses among the same settings per host; this shows why no fixed one
serves every host and load (docs/execution_settings.txt).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root
from benchmarks import workloads  # noqa: E402


def settings(cores):
    both = {'ACTIVE': 'active', 'PASSIVE': 'passive'}
    table = {}
    for engine, short in (('ThreadedEnginePerDevice', 'threaded'), ('NaiveEngine', 'naive')):
        for wait, name in both.items():
            table[f'{short}-{cores}-{name}'] = dict(OMP_NUM_THREADS=str(cores), OMP_WAIT_POLICY=wait,
                                                    MXNET_ENGINE_TYPE=engine)
        table[f'{short}-1'] = dict(OMP_NUM_THREADS='1', OMP_WAIT_POLICY='ACTIVE',
                                   MXNET_ENGINE_TYPE=engine)
    return table


def measure(flags, env, cpus, steps):
    code = (f'import sys, json; sys.path.insert(0, {workloads.ROOT!r}); from benchmarks import workloads as b; '
            f'print(json.dumps(b.measure_mxnet({flags!r}, 10, {steps}, 1)))')
    done = subprocess.run(['taskset', '-c', cpus, sys.executable, '-c', code],
                          env=dict(os.environ, **env), capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-500:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workloads', default='default,rts-st-cnn-affine')
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--steps', type=int, default=60)
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    every, last = ','.join(map(str, cpus)), str(cpus[-1])
    situations = {f'{len(cpus)} cores idle': (every, False), '1 core (taskset)': (str(cpus[0]), False),
                  f'{len(cpus)} cores, one busy': (every, True)}
    chosen = workloads.resolved(args.workloads.split(','))
    table, results = settings(len(cpus)), {}
    print(f'host: {workloads.host()}', flush=True)
    for _ in range(args.repeats):
        for workload, flags in chosen.items():
            for situation, (where, busy) in situations.items():
                hog = subprocess.Popen(['taskset', '-c', last, sys.executable, '-c',
                                        'while True: pass']) if busy else None
                try:
                    for name, env in table.items():
                        r = measure(flags, env, where, args.steps)
                        if r:
                            results.setdefault((workload, situation, name), []).append(
                                (r['imgs_per_s'], r['loop_imgs_per_s']))
                finally:
                    if hog:
                        hog.kill()
                        hog.wait()
    for workload in chosen:
        print(f'\n{workload}: median images/s, step / train.py loop')
        print(f'{"setting":22s}' + ''.join(f'{s:>26s}' for s in situations))
        for name in table:
            row = f'{name:22s}'
            for situation in situations:
                runs = results.get((workload, situation, name))
                row += (f'{statistics.median(a for a, _ in runs):>12,.0f} / '
                        f'{statistics.median(b for _, b in runs):>9,.0f}  ' if runs
                        else f'{"failed":>26s}')
            print(row, flush=True)


if __name__ == '__main__':
    main()
