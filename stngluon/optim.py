"""The optimizer gluon.Trainer runs: MXNet's Adam, with every parameter updated in one call.

MXNet 1.9.1 updates each parameter with its own ``adam_update`` call, a loop compiled for
any x86-64 CPU: on the FCN's first weight (1764 x w) it takes longer than the layer's
forward pass. ``Adam`` is ``mx.optimizer.Adam`` (same hyper-parameters, state, checkpoint
and bias-corrected rate: Kingma & Ba 2015, Algorithm 1) whose updates go to
``stn_adam_update`` (ops/adam_update.cc): all the parameters at once, vectorised, the
same bits as ``adam_update``. Where the operator library is missing, or a parameter is not
a dense float32 array on a CPU, it updates as ``mx.optimizer.Adam`` does. ``Trainer`` is the
``gluon.Trainer`` that hands it the parameters with the least Python.
"""
import ctypes
import math

from stngluon import compat  # noqa: F401  (before mxnet)
import mxnet as mx
from mxnet import gluon
import numpy as np

from stngluon import ops

OP = 'stn_adam_update'


def data_pointer(array):
    """The address of ``array``'s data (MXNDArrayGetData: on the CPU, in MXNet's own
    row-major layout, an array in oneDNN's blocked layout reordered back first)."""
    pointer = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    return pointer.value


def plain_layout(arrays):
    """Put each convolution weight among ``arrays`` (any array of more than two dimensions)
    back in MXNet's own (row-major) memory layout, in place; the rest are left as they are.

    An inference-mode convolution (evaluation, the pictures) has oneDNN store its weight in
    a blocked layout of its own (dense layers' weights stay plain), and the next
    training-mode one asks for it back later, on the engine's schedule. Built-in operators
    read either; an external operator's output must be plain (MXNet stops with "We can't
    generate TBlob for MKLDNN data"). After the array's pending writes (the reorder among
    them), MXNDArrayGetData reorders it back."""
    for a in (a for a in arrays if a.ndim > 2):
        a.wait_to_read()
        data_pointer(a)


class Adam(mx.optimizer.Adam):
    """``mx.optimizer.Adam``, updating every parameter in one ``stn_adam_update`` call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.aggregate_num = 1 << 16   # the Updater hands every parameter over at once

    def __getstate__(self):   # a checkpoint; whether the library loads is this process's to find
        state = super().__getstate__()
        state.pop('_fused', None)
        return state

    def fused(self, index, weights, grads):
        """Where ``stn_adam_update`` can update the parameters ``index``, the positions of
        the convolution weights among ``weights`` (more than two dimensions: put back in
        MXNet's layout before each update, ``plain_layout``); else None. Asked once."""
        known = self.__dict__.setdefault('_fused', {})
        if tuple(index) not in known:
            usable = ops.load() and all(
                a.dtype == np.float32 and a.stype == 'default' and a.context.device_type == 'cpu'
                for a in (*weights, *grads))
            known[tuple(index)] = [k for k, w in enumerate(weights) if w.ndim > 2] if usable else None
        return known[tuple(index)]

    def update_multi_precision(self, index, weight, grad, state):
        if not isinstance(index, (list, tuple)):
            index, weight, grad, state = [index], [weight], [grad], [state]
        convolutions = self.fused(index, weight, grad)
        if convolutions is None:
            for i, w, g, s in zip(index, weight, grad, state):
                super().update_multi_precision(i, w, g, s)
            return
        self._update_count(index)
        lrs, wds = self._get_lrs(index), self._get_wds(index)
        for k, i in enumerate(index):   # the bias correction, as mx.optimizer.Adam.update
            t = self._index_update_count[i]
            coef1, coef2 = 1. - self.beta1 ** t, 1. - self.beta2 ** t
            lrs[k] *= math.sqrt(coef2) / coef1
        kwargs = {'beta1': self.beta1, 'beta2': self.beta2, 'epsilon': self.epsilon,
                  'rescale_grad': self.rescale_grad}
        if self.clip_gradient:
            kwargs['clip_gradient'] = self.clip_gradient
        plain_layout([weight[k] for k in convolutions])
        inputs = [a for w, g, (mean, var) in zip(weight, grad, state) for a in (w, g, mean, var)]
        invoke(OP, inputs, weight, num_weights=len(weight), lrs=','.join(map(str, lrs)),
               wds=','.join(map(str, wds)), **kwargs)


_HANDLES = {}


def invoke(name, inputs, out, **attrs):
    """``getattr(mx.nd, name)(*inputs, out=out, **attrs)``, ``out`` a list of arrays, as one
    MXImperativeInvokeEx call (the C call the generated function makes), with the
    operator's handle looked up once: the generated function's own Python is 2% of the
    bare FCN's step on one core (benchmarks/bench_update.py)."""
    handle = _HANDLES.get(name)
    if handle is None:
        handle = _HANDLES[name] = mx.base.OpHandle()
        mx.base.check_call(mx.base._LIB.NNGetOpHandle(mx.base.c_str(name), ctypes.byref(handle)))
    outputs = (mx.base.NDArrayHandle * len(out))(*[o.handle for o in out])
    num_outputs = ctypes.c_int(len(out))
    outputs = ctypes.cast(outputs, ctypes.POINTER(mx.base.NDArrayHandle))
    out_stypes = ctypes.POINTER(ctypes.c_int)()
    mx.base.check_call(mx.base._LIB.MXImperativeInvokeEx(
        handle, ctypes.c_int(len(inputs)), mx.base.c_handle_array(inputs),
        ctypes.byref(num_outputs), ctypes.byref(outputs), ctypes.c_int(len(attrs)),
        mx.base.c_str_array(list(attrs)), mx.base.c_str_array([str(v) for v in attrs.values()]),
        ctypes.byref(out_stypes)))


class Trainer(gluon.Trainer):
    """``gluon.Trainer`` whose update goes straight to ``Adam``'s one call where nothing
    else has to happen: one device, no kvstore, every parameter's state made, no stale
    gradient. ``gluon.Trainer._update`` and its ``Updater`` walk the parameters in Python
    (dtypes, contexts, states) on every step: 3-4% of the bare FCN's step on one core
    (benchmarks/bench_update.py). Anything else goes to ``gluon.Trainer``'s update."""

    def _update(self, ignore_stale_grad=False):
        updater = self._updaters[0] if len(self._updaters) == 1 else None
        if (ignore_stale_grad or self._kvstore is not None or updater is None
                or not isinstance(updater.optimizer, Adam)
                or getattr(self, '_amp_loss_scaler', None) is not None):
            return super()._update(ignore_stale_grad)
        index = [i for i, p in enumerate(self._params) if p.grad_req != 'null']
        if any(self._params[i]._data is None or self._params[i]._grad is None for i in index):
            return super()._update(ignore_stale_grad)   # says which is not initialized
        weights = [self._params[i]._data[0] for i in index]
        grads = [self._params[i]._grad[0] for i in index]
        if (not all(i in updater.states and updater.states_synced[i] for i in index)
                or not all(w._fresh_grad for w in weights)
                or updater.optimizer.fused(index, weights, grads) is None):
            return super()._update(ignore_stale_grad)   # makes the states; or says what is stale
        for w in weights:
            w._fresh_grad = False
        updater.optimizer.update_multi_precision(index, weights, grads,
                                                 [updater.states[i] for i in index])


def create(name, **params):
    """The optimizer ``name`` ('adam', or any of MXNet's) with ``params``, as
    ``mx.optimizer.create``; 'adam' is ``Adam``."""
    return Adam(**params) if name == 'adam' else mx.optimizer.create(name, **params)


def adopt(trainer):
    """After ``trainer.load_states``: a checkpoint written before ``Adam`` existed brings back
    ``mx.optimizer.Adam``; it becomes ``Adam`` with the same state (the Trainer's updaters
    hand it every parameter at once)."""
    kvstore_updater = getattr(trainer._kvstore, '_updater', None)
    for updater in [*trainer._updaters, *([kvstore_updater] if kvstore_updater else [])]:
        if type(updater.optimizer) is mx.optimizer.Adam:
            optimizer = Adam.__new__(Adam)
            optimizer.__dict__.update(updater.optimizer.__dict__, aggregate_num=1 << 16)
            updater.optimizer = optimizer
        updater.aggregate_updates = updater.optimizer.aggregate_num > 0
    in_use = kvstore_updater if trainer._update_on_kvstore else trainer._updaters[0]
    if in_use is not None:   # else the servers update (a dist kvstore): they keep theirs
        trainer._optimizer = in_use.optimizer
