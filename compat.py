"""Import this before ``mxnet``: it lets MXNet 1.9.1 run on numpy >= 1.24 (Python 3.12), and
gives MXNet's operators one OpenMP thread per core this process may use.

mxnet 1.9.1 refers to ``np.bool``, an alias of ``bool`` that numpy 1.24 removed; numpy
1.23.5 (Python <= 3.11) still has it, numpy 1.26 (the first with Python 3.12 wheels)
does not. Restoring the alias is all MXNet needs. Python 3.13 cannot work: mxnet 1.9.1
requires numpy < 2, and numpy 1.x has no wheels for 3.13.
"""
import os
import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter('ignore')   # numpy 1.23 warns that the alias is deprecated
    try:
        np.bool
    except AttributeError:
        np.bool = bool
os.environ.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')  # no banner on every Module reshape
# The PyPI MXNet runs its operators on one OpenMP thread here unless told otherwise; all the
# cores train fastest (bench_train.py). OMP_NUM_THREADS=N in the environment overrides it.
# Results repeat exactly for a given thread count, and differ slightly between thread counts
# (sums are taken in another order). config.json records the count a run used.
# The wait policy (and MXNet's engine) that trains fastest depends on the host and its
# load: runtime.py measures them per host; ACTIVE (spinning) is the default where it does not.
# runtime.py chooses the wait policy and the engine per host by measurement; what the
# environment set before this import wins there (GIVEN).
# A wait policy set here, not by the user, is listed in STN_DEFAULTED, which child processes
# inherit with it: for them it is not given either, and train.py's choice stays theirs.
DEFAULTED = 'STN_DEFAULTED'
_defaulted = set(filter(None, os.environ.get(DEFAULTED, '').split(',')))
GIVEN = {k: os.environ[k] for k in ('MXNET_ENGINE_TYPE', 'OMP_WAIT_POLICY')
         if k in os.environ and k not in _defaulted}
if 'OMP_WAIT_POLICY' not in os.environ:
    os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'
    os.environ[DEFAULTED] = ','.join(sorted(_defaulted | {'OMP_WAIT_POLICY'}))
try:
    THREADS = int(os.environ.setdefault('OMP_NUM_THREADS', str(len(os.sched_getaffinity(0)))))
except ValueError:
    raise SystemExit(f'error: OMP_NUM_THREADS={os.environ["OMP_NUM_THREADS"]!r} is not a whole '
                     f'number of threads: unset it (one per core) or set it to one') from None
