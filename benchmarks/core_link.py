"""How long a cache line takes to go between two cores and back, over time, and what that
does to two-thread training.

    python benchmarks/core_link.py                        # the round trip every 0.5 s for 30 s
    python benchmarks/core_link.py --workload default     # and each framework's step beside it

On a VM the two cores it is given are two threads of the host's, which the host may place
on cores that share a cache or on cores that do not, and move between the two while the VM
runs; the guest sees neither, nor stolen time. A thread on each of the first two usable
cores takes turns with the other to bump a shared counter (core_link.c, built here with
the C compiler). With ``--workload``, stn-gluon (at the settings train.py would choose for
all usable cores) and then the PyTorch twin each time their training step for a second
(workloads.time_steps) after every 0.2 s of the round trip, --rounds times, in a fresh
process: a row per round.
"""
import argparse
import ctypes
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root
from benchmarks.workloads import (ENVIRON, ROOT, WORKLOADS, environment, host,  # noqa: E402
                                  resolved)

SOURCE = os.path.join(ROOT, 'benchmarks', 'core_link.c')


@functools.lru_cache(maxsize=None)
def library():
    """core_link.c, compiled into a temporary folder and loaded."""
    compiler = os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc')
    if not compiler:
        sys.exit('core_link.py: no C compiler (cc or gcc on PATH, or CC) to build core_link.c')
    folder = tempfile.mkdtemp(prefix='core_link-')
    try:
        path = os.path.join(folder, 'core_link.so')
        subprocess.run([compiler, '-O2', '-shared', '-fPIC', '-pthread', SOURCE, '-o', path],
                       check=True)
        lib = ctypes.CDLL(path)
    finally:
        shutil.rmtree(folder)
    lib.round_trip_ns.restype = ctypes.c_double
    lib.round_trip_ns.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_double]
    return lib


def round_trip_ns(seconds, cores=None):
    """Mean nanoseconds of a round trip between ``cores`` (default: the first two usable)."""
    a, b = cores or sorted(os.sched_getaffinity(0))[:2]
    result = library().round_trip_ns(a, b, seconds)
    if result < 0:
        raise ValueError(f'core_link.py: this process may not use cores {a} and {b}')
    return result


def track(framework, flags, rounds):
    """In a measuring process: ``rounds`` times, the round trip for 0.2 s, then
    ``framework``'s step for a second; a JSON line per round."""
    from benchmarks import workloads
    build = workloads.mxnet_step if framework == 'mxnet' else workloads.torch_step
    step, shape, sync, _ = build(flags)
    for _ in range(10):
        step()
    sync()
    for _ in range(rounds):
        link = round_trip_ns(0.2)
        print(json.dumps({'link_ns': link,
                          'imgs_per_s': workloads.time_steps(step, shape[0], 2, 10, sync)}),
              flush=True)


def tracked(framework, flags, rounds):
    """``track`` in a fresh process on every usable core; its rows."""
    from stngluon import runtime
    settings = runtime.chosen_for(flags, ENVIRON.get('OMP_NUM_THREADS'), ENVIRON) \
        if framework == 'mxnet' else None
    env = environment(framework, settings)   # PyTorch: at its defaults, as bench_train.py's
    code = (f'import sys; sys.path.insert(0, {ROOT!r}); from benchmarks import core_link; '
            f'core_link.track({framework!r}, {flags!r}, {rounds})')
    result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                            text=True, timeout=60 + 10 * rounds)
    if result.returncode != 0:
        sys.exit(f'core_link.py: {framework} failed:\n{result.stderr[-2000:]}')
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seconds', type=float, default=30.0, help='how long to watch the link')
    p.add_argument('--every', type=float, default=0.5, help='seconds a printed round trip spans')
    p.add_argument('--workload', choices=list(WORKLOADS),
                   help='also time stn-gluon\'s and PyTorch\'s step on it beside the link')
    p.add_argument('--rounds', type=int, default=25, help='with --workload: rounds per framework')
    args = p.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        p.error('the link is between two cores, and this process may use only one')
    print(f'host: {host()}', flush=True)
    if args.workload:
        flags = resolved([args.workload])[args.workload]
        print(f'{args.workload}: per round, the round trip (ns) for 0.2 s, then the step '
              f'(images/s) for a second; stn-gluon, then PyTorch', flush=True)
        for framework in ('mxnet', 'torch'):
            rows = tracked(framework, flags, args.rounds)
            for row in rows:
                print(f'{framework:6s} {row["link_ns"]:6.0f} {row["imgs_per_s"]:8,.0f}', flush=True)
            fastest = min(row['link_ns'] for row in rows)
            for name, near in (('within 1.5x of the fastest link', True), ('slower', False)):
                rates = [r['imgs_per_s'] for r in rows if (r['link_ns'] < 1.5 * fastest) == near]
                if rates:
                    print(f'{framework}: {len(rates)} rounds {name}: median '
                          f'{statistics.median(rates):,.0f} images/s', flush=True)
        return
    print(f'round trip between the first two usable cores, ns, each the mean of '
          f'{args.every:g} s:', flush=True)
    trips, start = [], time.monotonic()
    while time.monotonic() - start < args.seconds:
        trips.append(round_trip_ns(args.every))
        print(f'{trips[-1]:.0f}', end=' ', flush=True)
    slow = sum(t >= 1.5 * min(trips) for t in trips)
    print(f'\nmin {min(trips):.0f}, median {statistics.median(trips):.0f}, max {max(trips):.0f}; '
          f'{slow} of {len(trips)} at 1.5x the fastest or more')


if __name__ == '__main__':
    main()
