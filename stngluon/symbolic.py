"""The same network in MXNet's symbolic API, built on ``sym.SpatialTransformer``, and its
training with ``mx.mod.Module`` (``ModuleModel``, train.py --api symbol).

    data (N, 1, H, W) -> SpatialTransformer(data, loc=get_loc(data)) -> LeNet -> SoftmaxOutput

Every layer carries the name of its twin in the Gluon ``net.Net`` (``net_stn_loc_conv0``,
``net_lenet_dense1``, ...), so parameter files move between the two APIs unchanged: a
Gluon export loads into an ``mx.mod.Module`` of this symbol and a Module checkpoint
loads into ``gluon.SymbolBlock``. The localisation layers carry ``lr_mult`` as a symbol
attribute (``__lr_mult__``), which the Module's optimizer reads.
"""
import logging
import time
import warnings

from stngluon import compat  # noqa: F401  (before mxnet)
import mxnet as mx
import numpy as np

from stngluon import optim, rundir
from stngluon.engine import (Schedule, check_loss, epoch_order, old_checkpoints, optimizer_params,
                             progress_bar)
from net import MEAN, STD
from stn import identity_theta, sampling_grid

SYMBOLIC_TRANSFORMS = ('affine', 'none')   # what get_symbol builds


def get_loc(data, loc_lr_mult=1.0, prefix='net_stn_'):
    """The localisation net: theta (N, 6) from data (paper section 3.1)."""
    attr = {'__lr_mult__': str(loc_lr_mult)}

    def layer(op, name, x, **kwargs):
        weight = mx.sym.var(f'{prefix}{name}_weight', attr=attr)
        bias = mx.sym.var(f'{prefix}{name}_bias', attr=attr)
        return op(x, weight=weight, bias=bias, name=f'{prefix}{name}_fwd', **kwargs)

    x = layer(mx.sym.Convolution, 'loc_conv0', data, kernel=(7, 7), num_filter=8)
    x = mx.sym.Activation(mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type='max'), 'relu')
    x = layer(mx.sym.Convolution, 'loc_conv1', x, kernel=(5, 5), num_filter=10)
    x = mx.sym.Activation(mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type='max'), 'relu')
    x = mx.sym.Activation(layer(mx.sym.FullyConnected, 'loc_dense0', x, num_hidden=32), 'relu')
    return layer(mx.sym.FullyConnected, 'regressor', x, num_hidden=6)


def get_symbol(num_classes=10, transform='affine', target_shape=(28, 28), loc_lr_mult=1.0,
               softmax=True):
    """LeNet with an affine spatial transformer in front (``transform`` 'none': without);
    logits, or SoftmaxOutput when ``softmax``.

    ``target_shape`` is the transformer's output H x W (the input's, to keep the size).
    """
    if transform not in SYMBOLIC_TRANSFORMS:
        raise ValueError(f'the symbolic network has transform '
                         f'{" or ".join(SYMBOLIC_TRANSFORMS)}, '
                         f'not {transform!r}')
    data = mx.sym.var('data')
    x = data
    if transform == 'affine':
        x = mx.sym.SpatialTransformer(data=data, loc=get_loc(data, loc_lr_mult),
                                      target_shape=tuple(target_shape), transform_type='affine',
                                      sampler_type='bilinear', name='net_stn_transformer')
    x = (x - MEAN) / STD

    def layer(op, name, x, **kwargs):
        return op(x, name=f'net_lenet_{name}_fwd', weight=mx.sym.var(f'net_lenet_{name}_weight'),
                  bias=mx.sym.var(f'net_lenet_{name}_bias'), **kwargs)

    x = layer(mx.sym.Convolution, 'conv0', x, kernel=(5, 5), num_filter=10)
    x = mx.sym.Activation(mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type='max'), 'relu')
    x = layer(mx.sym.Convolution, 'conv1', x, kernel=(5, 5), num_filter=20)
    x = mx.sym.Dropout(x, p=0.5, axes=(2, 3))
    x = mx.sym.Activation(mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type='max'), 'relu')
    x = mx.sym.Activation(layer(mx.sym.FullyConnected, 'dense0', mx.sym.flatten(x), num_hidden=50),
                          'relu')
    x = mx.sym.Dropout(x, p=0.5)
    logits = layer(mx.sym.FullyConnected, 'dense1', x, num_hidden=num_classes)
    return mx.sym.SoftmaxOutput(logits, name='softmax') if softmax else logits


def identity_params():
    """Initial regressor parameters that make a fresh transformer the identity.

    MXNet's name-based ``stn_loc`` initialisation rule does not fire for these names
    (nor for Gluon's), so they are passed to ``Module.init_params`` explicitly.
    """
    return {'net_stn_regressor_weight': mx.nd.zeros((6, 32)),
            'net_stn_regressor_bias': mx.nd.array(identity_theta('affine'))}


def count_symbol_params(symbol, data_shape):
    shapes, _, _ = symbol.infer_shape(data=data_shape)
    names = symbol.list_arguments()
    return sum(int(np.prod(s)) for n, s in zip(names, shapes) if n not in ('data', 'softmax_label'))


class ModuleModel:
    """get_symbol() trained with mx.mod.Module.fit over mx.io.NDArrayIter: engine.py's
    model interface for train.py --api symbol.

    ``fit`` runs one epoch per call, so that the epoch loop, the checkpoints and the
    log line are the Gluon path's. The last partial batch of an epoch is dropped.
    """

    def __init__(self, config, data_shape, ctx, begin_epoch=0):
        """``begin_epoch``: epochs already done (the schedule counts updates from there)."""
        self.config = config
        num, *image_shape = data_shape
        symbol = get_symbol(transform=config.transform, target_shape=image_shape[1:],
                            loc_lr_mult=config.loc_lr_mult)
        self.logits = rundir.logits_of(symbol)
        quiet = logging.getLogger('module')
        quiet.setLevel(logging.ERROR)
        self.mod = mx.mod.Module(symbol, context=ctx, logger=quiet)
        self.mod.bind(data_shapes=[('data', (config.batch_size, *image_shape))],
                      label_shapes=[('softmax_label', (config.batch_size,))])
        self.mod.init_params(mx.init.Xavier(magnitude=2.24), allow_missing=True,
                             arg_params=identity_params() if config.transform != 'none' else None)
        self.num_params = count_symbol_params(symbol, (1, *image_shape))
        batches = num // config.batch_size
        # Our own optimizer object (sym: the __lr_mult__ attributes), so that its rate is readable.
        self.optimizer = mx.optimizer.create(
            config.optimizer, sym=symbol, rescale_grad=1 / config.batch_size,
            begin_num_update=begin_epoch * batches,
            **optimizer_params(config, Schedule(config, batches)))
        self.mod.init_optimizer(optimizer=self.optimizer)

    @property
    def learning_rate(self):
        return self.optimizer.learning_rate

    def fit_epoch(self, epoch, x, y):
        config = self.config
        order = epoch_order(config, epoch, len(x))
        batches = len(x) // config.batch_size
        data = mx.io.NDArrayIter(x[order], y[order], config.batch_size, shuffle=False,
                                 last_batch_handle='discard', label_name='softmax_label')
        loss = mx.metric.CrossEntropy()
        progress = progress_bar(epoch, batches)

        def after_batch(param):
            progress.update()
            if param.nbatch % 50 == 0 or param.nbatch == batches - 1:
                mean = loss.get()[1]
                check_loss(mean, epoch, param.nbatch + 1)
                progress.set_postfix(loss=f'{mean:.4f}')

        start = time.time()
        with warnings.catch_warnings():  # fit re-announces the bind and init done above
            warnings.simplefilter('ignore')
            self.mod.fit(data, eval_metric=loss, begin_epoch=epoch - 1, num_epoch=epoch,
                         batch_end_callback=after_batch)
        progress.close()
        return loss.get()[1], batches * config.batch_size / (time.time() - start)

    def evaluate(self, x, y, batch_size=1000):
        """Mean cross-entropy and accuracy over every example of (x, y)."""
        probs = self.mod.predict(mx.io.NDArrayIter(x, y, batch_size,
                                                   label_name='softmax_label')).asnumpy()
        assert len(probs) == len(x)
        # the convolutions' weights back in MXNet's layout, as engine.GluonModel.plain_weights
        optim.plain_layout([a for arrays in self.mod._exec_group.param_arrays for a in arrays])
        picked = probs[np.arange(len(y)), y]
        return float(-np.log(np.maximum(picked, 1e-12)).mean()), float((probs.argmax(1) == y).mean())

    def regions(self, images):
        """The transformer's output and sampling grid for ``images`` (N, C, H, W), as numpy
        arrays (N, C, H', W') and (N, 2, H', W'), for the pictures (engine.GluonModel's)."""
        internals = self.logits.get_internals()
        outputs = mx.sym.Group([internals[rundir.SYMBOL_TRANSFORMED], internals[rundir.THETA]])
        args, aux = self.mod.get_params()
        needed = {k: v for k, v in {**args, **aux}.items() if k in outputs.list_inputs()}
        out, theta = outputs.eval(ctx=mx.cpu(), data=mx.nd.array(images), **needed)
        return out.asnumpy(), sampling_grid(theta.asnumpy(), 'affine', out.shape[2:])

    def save_params(self, path):
        self.mod.save_params(path)

    def save_states(self, path):
        self.mod.save_optimizer_states(path)

    def load(self, stem):
        self.mod.load_params(stem + '.params')
        with old_checkpoints():
            self.mod.load_optimizer_states(stem + '.states')

    def export(self, prefix, epoch):
        """The logits symbol (no SoftmaxOutput) and the weights, laid out like a Gluon export."""
        args, aux = self.mod.get_params()
        self.logits.save(f'{prefix}-symbol.json')
        mx.nd.save(f'{prefix}-{epoch:04d}.params',
                   {**{f'arg:{k}': v for k, v in args.items()},
                    **{f'aux:{k}': v for k, v in aux.items()}})
