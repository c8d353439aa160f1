"""The bilinear sampler the transformer runs: MXNet's ``BilinearSampler``, or the same
operator with the batch shared out among OpenMP threads (ops/bilinear_sampler.cc).

MXNet 1.9.1's CPU ``BilinearSampler`` is a single-threaded loop over the images. The
operator library (ops.py: ``make ops``) registers ``stn_bilinear_sampler``: the same loop
and arithmetic for each image, so the same bits, with one image per thread at a time.
A second one, ``stn_bilinear_sampler_grid_only``, leaves the input's gradient at zero:
for the transformer on the network's images, which need none (``stn.sample(...,
input_grad=False)``). Their loop reads the four pixels of a sampling point without a
branch and is compiled for the CPU's instruction set, so that on one thread too they are
faster than the built-in operator. ``use_threaded()`` says whether ``stn.sample`` takes
them: where the library is built for this MXNet and loads. Otherwise, and with
STN_SAMPLER=builtin, the built-in operator. Either way the results are identical.

``engine.GluonModel.export`` (what train.py writes) names the built-in operator in the
graph (``ops.portable``), so a model file never needs this library; ``rundir.load_export``
reads any graph that way too (one exported with ``HybridBlock.export`` directly).
"""
import os

from stngluon import ops

OP = 'stn_bilinear_sampler'
# the same, for a sampler whose input needs no gradient (the network's images): its backward
# pass computes the grid's gradient only, the input's left at zero
OP_GRID_ONLY = 'stn_bilinear_sampler_grid_only'


def use_threaded():
    """Whether ``stn.sample`` takes the threaded sampler (see the module docstring)."""
    if os.environ.get('STN_SAMPLER', 'auto') == 'builtin':
        return False
    return ops.load()


def name():
    """The operator ``stn.sample`` runs, for a run's header and config.json."""
    return OP if use_threaded() else 'BilinearSampler'

