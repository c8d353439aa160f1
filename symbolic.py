"""The same network in MXNet's symbolic API, built on ``sym.SpatialTransformer``.

    data (N, 1, H, W) -> SpatialTransformer(data, loc=get_loc(data)) -> LeNet -> SoftmaxOutput

Every layer carries the name of its twin in the Gluon ``net.Net`` (``net_stn_loc_conv0``,
``net_lenet_dense1``, ...), so parameter files move between the two APIs unchanged: a
Gluon export loads into an ``mx.mod.Module`` of this symbol and a Module checkpoint
loads into ``gluon.SymbolBlock``. The localisation layers carry ``lr_mult`` as a symbol
attribute (``__lr_mult__``), which the Module's optimizer reads.
"""
import mxnet as mx
import numpy as np

from stn import IDENTITY

MEAN, STD = 0.1307, 0.3081  # the classifier's input standardisation, as in net.Net


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


def get_symbol(num_classes=10, add_stn=True, target_shape=(28, 28), loc_lr_mult=1.0,
               softmax=True):
    """LeNet with a spatial transformer in front; logits, or SoftmaxOutput when ``softmax``.

    ``target_shape`` is the transformer's output H x W (the input's, to keep the size).
    """
    data = mx.sym.var('data')
    x = data
    if add_stn:
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
            'net_stn_regressor_bias': mx.nd.array(IDENTITY)}


def logits_of(symbol):
    """``symbol`` without its SoftmaxOutput loss, if it has one."""
    if symbol.name == 'softmax':
        return symbol.get_children()[0]
    return symbol


def count_params(symbol, data_shape):
    shapes, _, _ = symbol.infer_shape(data=data_shape)
    names = symbol.list_arguments()
    return sum(int(np.prod(s)) for n, s in zip(names, shapes) if n not in ('data', 'softmax_label'))
