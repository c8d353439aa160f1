"""One epoch of training and evaluation, and the learning-rate schedule, for train.py.

A trained model is an object with this small interface, which train.py's loop uses:

    model = GluonModel(config, data_shape, ctx, begin_epoch)   # or symbolic.ModuleModel
    model.fit_epoch(epoch, x, y) -> (mean training loss, training images/s)
    model.evaluate(x, y)         -> (mean cross-entropy, accuracy) over every example
    model.learning_rate          the rate of the last update
    model.regions(images)        -> each transformer's outputs and sampling grids, numpy arrays
    model.save_params(path), model.save_states(path), model.load(stem), model.export(prefix, epoch)
    model.num_params             trainable parameters

``GluonModel`` is net.Net with a gluon.Trainer; ``symbolic.ModuleModel`` the symbolic
network with mx.mod.Module. Both take their learning rate from one ``Schedule``.
"""
import contextlib
import ctypes
import dataclasses
import hashlib
import itertools
import math
import os
import sys
import threading
import time

from stngluon import compat  # noqa: F401  (before mxnet)
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from tqdm import tqdm

# GluonCV 0.10 refuses to import at all when PyTorch >= 2.0 is installed beside it (its
# package __init__ checks torch's version), though its MXNet part works: hide torch (even
# an imported one) from that check while GluonCV imports.
_torch = sys.modules.get('torch')
sys.modules['torch'] = None   # makes "import torch" raise ImportError, which GluonCV skips
try:
    from gluoncv.utils import LRScheduler, LRSequential
finally:
    if _torch is None:
        del sys.modules['torch']
    else:
        sys.modules['torch'] = _torch

import net
import stn
from stngluon import ops, optim, runtime

LR_MODES = ('step', 'cosine')


class Schedule(mx.lr_scheduler.LRScheduler):
    """The learning rate of every update, for ``batches`` updates per epoch: a linear
    warm-up from 0 over ``config.warmup_epochs``, then ``config.lr_mode`` 'step' (``config.lr``
    multiplied by ``config.lr_factor`` after each epoch of ``config.lr_steps``) or 'cosine'
    (from ``config.lr`` to 0 at the end of ``config.epochs``). Built from GluonCV's
    ``LRScheduler`` and ``LRSequential``; an MXNet ``LRScheduler``, so ``gluon.Trainer``
    and ``mx.mod.Module`` both take it. MXNet's optimizers ask for the rate of update
    number n = 1, 2, ...; n - 1 updates came before it, so a step after epoch e applies
    from the first update of epoch e + 1 on.
    """

    def __init__(self, config, batches):
        super().__init__(base_lr=config.lr)
        warmup = round(config.warmup_epochs * batches)
        rest = max(2, config.epochs * batches - warmup)
        parts = [LRScheduler('linear', base_lr=0, target_lr=config.lr, niters=max(2, warmup))] \
            if warmup else []
        parts.append(LRScheduler(config.lr_mode, base_lr=config.lr, target_lr=0, niters=rest,
                                 step_iter=[s * batches - warmup for s in config.lr_steps],
                                 step_factor=config.lr_factor))
        self.sequence = LRSequential(parts)
        self.batches = batches

    def __call__(self, num_update):
        return self.sequence(max(num_update - 1, 0))

    def epoch_rates(self, epoch):
        """The rates of the updates of 1-based ``epoch``, in order."""
        return [self(n) for n in range((epoch - 1) * self.batches + 1, epoch * self.batches + 1)]


DIVERGED = 10 * math.log(10)   # ten times the loss of guessing among 10 classes


class Diverged(RuntimeError):
    """The training loss became NaN, infinite, or larger than DIVERGED."""


def check_loss(mean, epoch, step):
    """Raise ``Diverged`` if the running mean training loss is not finite or above DIVERGED
    (no network that learns gets there: a fresh one starts near ln 10 = 2.3)."""
    if not math.isfinite(mean):
        raise Diverged(f'the training loss became {mean} in epoch {epoch} (batch {step})')
    if mean > DIVERGED:
        raise Diverged(f'the training loss diverged to {mean:.4g} in epoch {epoch} (batch {step}), '
                       f'above {DIVERGED:.1f} (ten times the loss of guessing)')


def epoch_order(config, epoch, n):
    """The shuffle of ``epoch``, and the dropout seed with it: a resumed run repeats both."""
    mx.random.seed(config.seed * 1000 + epoch)
    return np.random.RandomState(config.seed * 1000 + epoch).permutation(n)


def progress_bar(epoch, batches, show=True):
    return tqdm(total=batches, desc=f'epoch {epoch}', leave=False, unit='batch',
                file=sys.stderr, disable=None if show else True)


class Watchdog:
    """Ends this process when a distributed run stops making progress.

    A dist_sync worker waits in the kvstore for every other worker and the servers; if one
    of them dies, ps-lite waits forever. While armed (``with watchdog.armed(what):``), a
    thread checks that ``beat()`` was called within ``timeout`` seconds, else prints
    ``message(what)`` and leaves with exit code 1 (``os._exit``: MXNet's shutdown would wait
    for the dead process too). Arm it only where nothing is written: training steps, not
    the checkpoint.
    """

    def __init__(self, timeout, message, poll=0.5):
        self.timeout, self.message, self.poll = timeout, message, poll
        self.what, self.last = None, time.monotonic()
        threading.Thread(target=self._watch, daemon=True, name='watchdog').start()

    def beat(self):
        self.last = time.monotonic()

    @contextlib.contextmanager
    def armed(self, what):
        self.beat()
        self.what = what
        try:
            yield
        finally:
            self.what = None

    def _watch(self):
        while True:
            time.sleep(self.poll)
            what = self.what
            if what is not None and time.monotonic() - self.last > self.timeout:
                print(f'\n{self.message(what)}', file=sys.stderr, flush=True)
                os._exit(1)


def optimizer_params(config, schedule):
    """Keyword arguments of ``mx.optimizer.create`` for the run's --optimizer."""
    params = {'learning_rate': config.lr, 'lr_scheduler': schedule}
    if config.optimizer == 'sgd':
        params['momentum'] = config.momentum
    return params


@contextlib.contextmanager
def old_checkpoints():
    """Lets the optimizer states of checkpoints written before this module moved into the
    package (which pickled its Schedule as ``engine.Schedule``) load."""
    added = sys.modules.setdefault('engine', sys.modules[__name__]) is sys.modules[__name__]
    try:
        yield
    finally:
        if added:
            del sys.modules['engine']


GATHER = 32   # batches fit_epoch takes from the training set at once
CHECK_EVERY = 50   # batches between fit_epoch's checks of the running loss (check_loss)
HOST = mx.cpu()   # where fit_epoch's batches are


def loss_sums(losses):
    """``[loss.sum() for loss in losses]`` as one (len(losses),) NDArray, bit for bit, in an
    operator or two for each run of (N,) arrays ``losses`` of one length (each row of their
    stack is summed in the order of the array alone); given to MXNet, not waited for."""
    runs = [mx.nd.stack(*run).sum(axis=1)
            for _, run in itertools.groupby(losses, key=lambda loss: loss.shape)]
    return runs[0] if len(runs) == 1 else mx.nd.concat(*runs, dim=0)


class RunningLoss:
    """An epoch's mean training loss so far, for fit_epoch's checks: every batch's losses
    summed in batch order in float32, as ``total += loss.sum()`` after each batch would,
    bit for bit, without an operator a batch or a wait for MXNet at each check. ``add``
    keeps a batch's losses (N,); ``check`` gives MXNet their sums (loss_sums) and adds up
    those it gave at the check before, computed by then, or all of them at the ``last``."""

    def __init__(self):
        self.total, self.images, self.batches = np.float32(0), 0, 0   # summed so far
        self.kept, self.summing = [], []   # losses, and (sums, images, batches) given to MXNet

    def add(self, losses):
        self.kept.append(losses)

    def check(self, last=False):
        """The mean loss of the images summed so far (NaN before any)."""
        if self.kept:
            losses = [loss for losses in self.kept for loss in losses]
            self.summing.append((loss_sums(losses), sum(loss.shape[0] for loss in losses),
                                 len(self.kept)))
            self.kept = []
        while len(self.summing) > (0 if last else 1):
            sums, images, batches = self.summing.pop(0)
            for loss_sum in sums.asnumpy():
                self.total = np.float32(self.total + loss_sum)
            self.images += images
            self.batches += batches
        return self.total / self.images if self.images else math.nan


def numpy_view(array):
    """A numpy array on the memory of ``array`` (a float32 NDArray on the CPU), for numpy to
    write what MXNet reads; ``array`` must outlive it. The memory stays MXNet's: an NDArray
    on numpy's memory (``nd.from_numpy``, zero_copy) is let go of by a Python callback on
    MXNet's engine thread, which deadlocks a fork made while that is pending (MXNet's fork
    handler waits for its engine while the forking thread holds the interpreter)."""
    memory = (ctypes.c_float * array.size).from_address(optim.data_pointer(array))
    return np.ctypeslib.as_array(memory).reshape(array.shape)


class Gathered:
    """GATHER batches of images and labels taken from the training set (numpy, in memory)
    into NDArrays on the CPU that numpy writes (numpy_view), each batch a view of them made
    once."""

    def __init__(self, shape):
        self.images_nd, self.labels_nd = mx.nd.empty(shape), mx.nd.empty(shape[0])
        self.images, self.labels = numpy_view(self.images_nd), numpy_view(self.labels_nd)
        self.views = {}

    def take(self, images, labels, indices):
        """images[indices], labels[indices] (float32 numpy) into the buffers, once every
        operator MXNet was given that reads them is done (to_dlpack_for_write waits for
        that). The copy runs in this thread, beside MXNet's engine thread still computing
        the batches before (as fast as MXNet's take, which would run in the engine's)."""
        mx.nd.to_dlpack_for_write(self.images_nd)
        mx.nd.to_dlpack_for_write(self.labels_nd)
        np.take(images, indices, axis=0, out=self.images[:len(indices)], mode='clip')
        np.take(labels, indices, out=self.labels[:len(indices)], mode='clip')

    def batch(self, first, end):
        """The images and labels first:end of the last take, as NDArray views."""
        if (first, end) not in self.views:
            self.views[first, end] = self.images_nd[first:end], self.labels_nd[first:end]
        return self.views[first, end]


class BatchLoss(gluon.HybridBlock):
    """Each image's softmax cross-entropy under ``net``: images (N, C, H, W) and labels (N,)
    -> losses (N,). The network and its loss in one cached graph: one call a batch, where
    two had cost the bare FCN 7% of its step (docs/speed.md)."""

    def __init__(self, net):
        super().__init__(prefix='')
        self.net = net
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def hybrid_forward(self, F, x, label):
        return self.loss(self.net(x), label)


class GluonModel:
    """net.Net trained with gluon.Trainer on batches sliced from the in-memory arrays."""

    def __init__(self, config, data_shape, ctx, begin_epoch=0, kvstore=None):
        """``ctx``: a context, or a list of them to train data-parallel on (every batch split
        across them with ``split_and_load``, gradients summed by the Trainer's kvstore,
        ``kvstore``, default 'device': a name, or a dist KVStore, when each worker
        process trains its share of every global batch); evaluation and the pictures use
        the first context."""
        self.config = config
        self.contexts = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
        self.ctx = self.contexts[0]
        num, *image_shape = data_shape
        # on CPUs the CNN's convolutions compute on padded channels (runtime.channel_block)
        self.net = net.build(config, runtime.channel_block() if all(
            c.device_type == 'cpu' for c in self.contexts) else 1)
        self.net.initialize(mx.init.Xavier(magnitude=2.24), ctx=self.contexts)
        # fit_epoch's network and loss in one graph. Hybridizing it hybridizes the net (its
        # child) and drops any graph the net has cached, so it comes before the net's first
        # forward: export needs that graph.
        self.batch_loss = BatchLoss(self.net)
        self.batch_loss.hybridize(static_alloc=True, static_shape=True)
        # Deferred init, so that shapes are known. In train mode: an inference-mode forward
        # lets oneDNN reorder weights in place, and a dist kvstore initialised from such
        # weights answers a worker's first pull before it holds them ("init 9 first", the
        # server aborts); the kvstore is initialised below, before any inference-mode forward.
        with autograd.train_mode():
            self.net(mx.nd.zeros((2, *image_shape), ctx=self.ctx))
        self.schedule = Schedule(config, math.ceil(num / config.batch_size))
        kvstore = kvstore if kvstore is not None else 'device'
        self.rank, self.workers = (kvstore.rank, kvstore.num_workers) \
            if isinstance(kvstore, mx.kvstore.KVStore) else (0, 1)
        # update_on_kvstore=False: every worker applies the same update to the summed
        # gradients, so every worker holds the weights and its optimizer state to checkpoint.
        # optim.Adam updates every parameter in one call; a dist kvstore that updates on its
        # servers (one worker) gets MXNet's own optimizer, which they can unpickle.
        on_servers = isinstance(kvstore, mx.kvstore.KVStore) and self.workers == 1
        optimizer = (mx.optimizer.create if on_servers else optim.create)(
            config.optimizer, **optimizer_params(config, self.schedule))
        self.trainer = optim.Trainer(self.net.collect_params(), optimizer, kvstore=kvstore,
                                     update_on_kvstore=False if self.workers > 1 else None)
        if self.workers > 1:
            self.start_from_rank_0()
        self.num_params = net.trainable_params(self.net)   # grid constants excluded
        self.beat = lambda: None   # called after every step (train.py: a Watchdog's beat)
        self.training_set = None   # (the images given, as float32, labels as float32)
        self.gathered = None   # two Gathered buffers fit_epoch takes its batches into

    def start_from_rank_0(self):
        """Give every worker rank 0's weights now, before any gradient exists.

        The servers keep one value per parameter: rank 0's weights after the kvstore's
        init, and from the first update on (update_on_kvstore=False) the summed gradients.
        Left to the first ``Trainer.step``, a worker's pull of the weights is queued beside
        the push of its first gradients, in no fixed order: pulled after the push, it is
        answered with the gradient sum, and that worker trains from wrong weights. So the
        Trainer's kvstore and its broadcast of the weights are made here, and waited for.
        """
        self.trainer._init_kvstore()
        self.trainer._init_params()
        mx.nd.waitall()

    def no_gradient(self, devices):
        """A zero gradient from each of ``devices``, which had no image of this batch (a last
        batch smaller than the devices or workers), marked fresh for ``Trainer.step``:
        summed with the others', it leaves the update theirs, and every device's weights
        get the same update."""
        for param in self.net.collect_params().values():
            if param.grad_req == 'null':
                continue
            for data, grad in zip(param.list_data(), param.list_grad()):
                if data.context in devices:
                    grad[:] = 0
                    data._fresh_grad = True

    @property
    def learning_rate(self):
        return self.trainer.learning_rate

    def fit_epoch(self, epoch, x, y):
        """One pass over (x, y) in shuffled mini-batches; returns (mean loss, images/s)."""
        config, ctx, batch_loss = self.config, self.ctx, self.batch_loss
        start = time.time()
        # GATHER batches at a time are taken from the set into one of two Gathered buffers,
        # kept from epoch to epoch, and every batch is a view of those: MXNet still computes
        # on one while the next is taken.
        gather = GATHER * config.batch_size
        if self.training_set is None or self.training_set[0] is not x:
            self.training_set = x, np.ascontiguousarray(x, np.float32), y.astype(np.float32)
        _, images, labels = self.training_set
        shape = (min(gather, len(x)), *x.shape[1:])
        if self.gathered is None or self.gathered[0].images.shape != shape:
            self.gathered = Gathered(shape), Gathered(shape)
        order = epoch_order(config, epoch, len(x))
        running, mean = RunningLoss(), 0.0
        progress = progress_bar(epoch, math.ceil(len(x) / config.batch_size), show=self.rank == 0)
        for step, i in enumerate(range(0, len(x), config.batch_size), 1):
            gathered = self.gathered[i // gather % 2]
            if i % gather == 0:
                gathered.take(images, labels, order[i:i + gather])
            batch = min(config.batch_size, len(x) - i)   # the gradients' sum is divided by it
            # this worker's share of the batch (all of it with one worker), within the gathered
            first, end = (i % gather + batch * k // self.workers
                          for k in (self.rank, self.rank + 1))
            devices = self.contexts[:end - first]   # fewer images than devices: fewer devices
            if len(devices) < len(self.contexts):
                self.no_gradient(self.contexts[len(devices):])
            if devices:
                batch_images, batch_labels = gathered.batch(first, end)
                if devices == [HOST]:   # where they are: nothing for split_and_load to do
                    data, label = [batch_images], [batch_labels]
                else:
                    data = gluon.utils.split_and_load(batch_images, devices, even_split=False)
                    label = gluon.utils.split_and_load(batch_labels, devices, even_split=False)
                with autograd.record():
                    losses = [batch_loss(d, t) for d, t in zip(data, label)]
                autograd.backward(losses)
                running.add(losses if len(losses) == 1 else [l.as_in_context(ctx) for l in losses])
            self.trainer.step(batch)
            self.beat()
            progress.update()
            last = i + config.batch_size >= len(x)
            if step % CHECK_EVERY == 0 or last:
                mean = running.check(last)
                if running.images:
                    check_loss(mean, epoch, running.batches)
                    progress.set_postfix(loss=f'{mean:.4f}')
        progress.close()
        rate = running.images * self.workers / (time.time() - start)
        return (mean if running.images else 0.0), rate   # mean: every batch's, read at the last

    def evaluate(self, x, y, batch_size=1000):
        """Mean cross-entropy and accuracy over every example of (x, y)."""
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        accuracy, mean_loss = mx.metric.Accuracy(), mx.metric.Loss()
        for i in range(0, len(x), batch_size):
            data = mx.nd.array(x[i:i + batch_size], ctx=self.ctx)
            label = mx.nd.array(y[i:i + batch_size], ctx=self.ctx)
            logits = self.net(data)
            accuracy.update(label, logits)
            mean_loss.update(None, loss_fn(logits, label))
        assert accuracy.num_inst == len(x)
        self.plain_weights()
        return mean_loss.get()[1], accuracy.get()[1]

    def plain_weights(self):
        """After inference-mode forwards (evaluation, the pictures): every convolution weight
        back in MXNet's own layout (optim.plain_layout). oneDNN keeps them in a blocked layout
        of its own, and MXNet 1.9.1's built-in updates of a weight in that layout race under
        the threaded engine (another result about one process in thirty)."""
        optim.plain_layout([a for p in self.net.collect_params().values() for a in p.list_data()])

    def regions(self, images):
        """What each transformer makes of ``images`` (N, C, H, W), for the pictures: (outputs
        (N, K*C, H', W'), grids (N, 2K, H', W')) numpy, one output and sampling grid per
        transformer: the input transformer(s) (side by side ones in order), then one on the
        feature map, shown as the input sampled where it reads (``net.feature_region``)."""
        config, x = self.config, mx.nd.array(images, ctx=self.ctx)
        model, outputs, grids = self.net, [], []
        h, shape = x, tuple(images.shape[2:])
        if model.stn is not None:
            h, theta = model.stn(x)
            shape = tuple(h.shape[2:])
            outputs.append(h)
            for t in np.split(theta.asnumpy(), config.transformers, axis=1):
                grids.append(mx.nd.array(stn.sampling_grid(t, config.transform, shape, config.tps_grid),
                                         ctx=self.ctx))
            h = model.pool(h) if model.pool is not None else h
        if model.feature_stn is not None:
            features = model.classifier[1](model.classifier[0]((h - model.mean) / model.std))
            _, theta = model.feature_stn(features)
            side = model.feature_stn.target_shape
            a, b = net.feature_to_input(side[0], model.pool is not None, shape[0])
            feature_grid = mx.nd.array(stn.sampling_grid(theta.asnumpy(), config.transform, side,
                                                         config.tps_grid), ctx=self.ctx)
            region = net.feature_region(mx.nd, feature_grid, grids[0] if grids else None,
                                        shape, a, b)
            outputs.append(mx.nd.BilinearSampler(x, region))
            grids.append(region)
        outputs, grids = mx.nd.concat(*outputs, dim=1).asnumpy(), mx.nd.concat(*grids, dim=1).asnumpy()
        self.plain_weights()
        return outputs, grids

    def fingerprint(self):
        """A short hash of every weight's bytes: equal on workers that hold equal weights."""
        digest = hashlib.sha256()
        for name, param in sorted(self.net.collect_params().items()):
            digest.update(name.encode() + param.data(self.ctx).asnumpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def input_dense(self):
        """What computes the FCN's input layer (net.Net.input_dense), or None."""
        return self.net.input_dense

    @property
    def channel_block(self):
        """The channel block the network computes in (1 where it pads nothing)."""
        return self.net.channel_block

    def float32_net(self):
        """The network, or where it computes in bfloat16 or on padded channels, the plain
        float32 network (unpadded convolutions) with its weights."""
        if self.config.precision == 'float32' and self.channel_block == 1:
            return self.net
        plain = net.build(dataclasses.replace(self.config, precision='float32'))
        plain.initialize(mx.init.Zero(), ctx=self.ctx)   # draws nothing: the weights follow
        plain.hybridize(static_alloc=True, static_shape=True)
        plain(mx.nd.zeros((1, *self.config.image_shape), ctx=self.ctx))
        trained = self.net.collect_params()
        for name, param in plain.collect_params().items():
            param.set_data(trained[name].data(self.ctx))
        return plain

    def save_params(self, path):
        self.net.save_parameters(path)

    def save_states(self, path):
        self.trainer.save_states(path)

    def load(self, stem):
        self.net.load_parameters(stem + '.params', ctx=self.contexts)
        with old_checkpoints():
            self.trainer.load_states(stem + '.states')   # the optimizer, with its update count
        optim.adopt(self.trainer)   # a checkpoint of MXNet's Adam: updates in one call again
        self.trainer.optimizer.lr_scheduler = self.schedule   # this run's schedule

    def export(self, prefix, epoch):
        """``HybridBlock.export``: prefix-symbol.json and prefix-EPOCH.params, the graph
        with MXNet's own operators only (``ops.portable``), in float32 (the weights of a
        --precision bfloat16 run are float32: they go into the float32 network)."""
        self.float32_net().export(prefix, epoch=epoch)
        with open(f'{prefix}-symbol.json') as f:
            graph = f.read()
        with open(f'{prefix}-symbol.json', 'w') as f:
            f.write(ops.portable(graph))
