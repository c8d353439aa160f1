"""The bilinear sampler the transformer runs: MXNet's ``BilinearSampler``, or the same
operator with the batch shared out among OpenMP threads (ops/bilinear_sampler.cc).

MXNet 1.9.1's CPU ``BilinearSampler`` is a single-threaded loop over the images. The
operator library (ops.py: ``make ops``) registers ``stn_bilinear_sampler``: the same loop
and arithmetic for each image, so the same bits, with one image per thread at a time.
``use_threaded()`` says whether ``stn.sample`` takes it: where the library is built for
this MXNet, loads, and the process runs MXNet's operators on more than one OpenMP thread
(on one thread the built-in operator is as fast). Anything else, and STN_SAMPLER=builtin,
keeps the built-in operator. Either way the results are identical.

``engine.GluonModel.export`` (what train.py writes) names the built-in operator in the
graph (``portable``), so a model file never needs this library; ``rundir.load_export``
reads any graph that way too (one exported with ``HybridBlock.export`` directly).
"""
import os

from stngluon import ops, runtime

OP = 'stn_bilinear_sampler'


def use_threaded():
    """Whether ``stn.sample`` takes the threaded sampler (see the module docstring)."""
    if os.environ.get('STN_SAMPLER', 'auto') == 'builtin' or runtime.threads() < 2:
        return False
    return ops.load()


def name():
    """The operator ``stn.sample`` runs, for a run's header and config.json."""
    return OP if use_threaded() else 'BilinearSampler'


def portable(symbol_json):
    """An exported graph (JSON text) with the threaded sampler's nodes named as MXNet's
    built-in ``BilinearSampler``, which computes the same."""
    return symbol_json.replace(f'"op": "{OP}"', '"op": "BilinearSampler"')

