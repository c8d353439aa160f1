"""Start a data-parallel run on this machine: one ps-lite scheduler, the servers and N
workers, all on 127.0.0.1, and stop them all together.

    python scripts/launch.py -n 2 python train.py --kvstore dist_sync --out result/dist
    python scripts/launch.py -n 2 python train.py --kvstore dist_sync --out result/dist --resume

Every process gets MXNet's ps-lite variables (DMLC_ROLE, DMLC_PS_ROOT_URI,
DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER, DMLC_NUM_WORKER) and, unless OMP_NUM_THREADS is set,
an equal share of the cores. The workers run the command; a scheduler or server is
``python -c '... import mxnet'`` (importing MXNet with DMLC_ROLE=server or scheduler
runs that node). When every worker has finished, the scheduler and servers finish too.
When a worker fails or is killed, or a server or the scheduler dies, the launcher stops
every other process at once and exits with the failing one's code: rank 0 has kept the
last complete checkpoint, so the same command with --resume continues.

MXNet's own tools/launch.py --launcher local does this job, but hangs with MXNet 1.9.1 on
Python >= 3.9 (its dmlc_tracker calls the removed Thread.isAlive() after starting the
scheduler) and never stops the others when one process fails. On several machines, start
the processes by hand or with your cluster's job runner (docs/scaling-out.md).
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
NODE = [sys.executable, '-c', 'from stngluon import runtime; runtime.configure(); '
        'from stngluon import compat; import mxnet']   # a scheduler or a server
MAX_PROCESSES = 64   # workers or servers: all on this machine
LINGER = 15   # seconds the scheduler and servers may take to finish after the last worker


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(command, workers, servers=1, port=None, poll=0.2):
    """Run ``command`` as ``workers`` ps-lite workers beside a scheduler and ``servers``
    servers on loopback; return 0 when every worker succeeded, else the first failing
    process's exit code (the rest stopped)."""
    port = port or free_port()
    env = dict(os.environ, DMLC_PS_ROOT_URI='127.0.0.1', DMLC_PS_ROOT_PORT=str(port),
               DMLC_NUM_SERVER=str(servers), DMLC_NUM_WORKER=str(workers), DMLC_INTERFACE='lo')
    env.setdefault('OMP_NUM_THREADS', str(max(1, len(os.sched_getaffinity(0)) // workers)))

    def start(role, argv):   # each in its own process group, so that stopping it stops all
        return subprocess.Popen(argv, cwd=ROOT if argv is NODE else None,
                                env=dict(env, DMLC_ROLE=role), start_new_session=True)

    nodes, running, failed = [], [], None
    try:
        nodes.append(('scheduler', start('scheduler', NODE)))
        nodes += [(f'server {k}', start('server', NODE)) for k in range(servers)]
        try:
            running = [(f'worker {k}', start('worker', command)) for k in range(workers)]
        except OSError as e:   # no such program, not executable: stop what was started
            print(f'launch.py: cannot start the workers\' command {command[0]!r}: {e.strerror}; '
                  f'stopped the scheduler and servers', file=sys.stderr)
            return 127 if isinstance(e, FileNotFoundError) else 126
        while running and failed is None:
            time.sleep(poll)
            for name, process in running + nodes:
                code = process.poll()
                if code:   # a scheduler or server ends with 0 only as the workers finish
                    failed = name, process.pid, code
                    break
            running = [(n, p) for n, p in running if p.poll() is None]
        if failed is None:   # the workers are done: the scheduler and servers follow
            deadline = time.time() + LINGER
            while time.time() < deadline and any(p.poll() is None for _, p in nodes):
                time.sleep(poll)
            if all(p.poll() is not None for _, p in nodes):
                return 0
            print(f'launch.py: every worker exited with 0, but the scheduler and servers were '
                  f'still waiting {LINGER} s later: a worker ended without joining the run (it '
                  f'never created a dist kvstore, or left before the others finished), so the '
                  f'run did not complete; stopped them', file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        for _, process in running:   # train.py stops at once and says how to continue
            os.killpg(process.pid, signal.SIGINT)
        deadline = time.time() + 10
        while time.time() < deadline and any(p.poll() is None for _, p in running):
            time.sleep(poll)
        failed = 'you (Ctrl-C)', os.getpid(), 130
    finally:
        for _, process in nodes + running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    name, pid, code = failed
    print(f'launch.py: {name} (pid {pid}) ended with '
          f'{f"signal {-code}" if code < 0 else f"exit code {code}"}; stopped every other '
          f'process of the run. Its last complete checkpoint is kept: the same command with '
          f'--resume continues it', file=sys.stderr)
    return code if code > 0 else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                usage='python scripts/launch.py -n WORKERS [-s SERVERS] [--port P] '
                                      'COMMAND...')
    p.add_argument('-n', '--workers', type=int, required=True, help='worker processes')
    p.add_argument('-s', '--servers', type=int, default=1, help='server processes')
    p.add_argument('--port', type=int, default=None,
                   help="the scheduler's port on 127.0.0.1 (default: a free one)")
    p.add_argument('command', nargs=argparse.REMAINDER, help='what each worker runs')
    args = p.parse_args(argv)
    if not (1 <= args.workers <= MAX_PROCESSES and 1 <= args.servers <= MAX_PROCESSES):
        p.error(f'-n and -s must be between 1 and {MAX_PROCESSES}: every process runs on this '
                f'machine')
    if args.port is not None and not 1024 <= args.port <= 65535:
        p.error(f'--port {args.port}: use a free port between 1024 and 65535, or leave it out '
                f'for one chosen for you')
    if not args.command:
        p.error('give the command every worker runs, e.g. python train.py --kvstore dist_sync')
    return launch(args.command, args.workers, args.servers, args.port)


if __name__ == '__main__':
    sys.exit(main())
