"""Import this before ``mxnet``: it lets MXNet 1.9.1 run on numpy >= 1.24 (Python 3.12).

mxnet 1.9.1 refers to ``np.bool``, an alias of ``bool`` that numpy 1.24 removed; numpy
1.23.5 (Python <= 3.11) still has it, numpy 1.26 (the first with Python 3.12 wheels)
does not. Restoring the alias is all MXNet needs. Python 3.13 cannot work: mxnet 1.9.1
requires numpy < 2, and numpy 1.x has no wheels for 3.13. (How many threads MXNet runs
its operators on is not set here: each script calls ``runtime.configure()``.)
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
