"""The spatial transformer (Jaderberg et al., NIPS 2015, section 3) as a Gluon HybridBlock.

    U (N, C, H, W) --localisation--> theta (N, 6) --GridGenerator--> grid (N, 2, H', W')
      --BilinearSampler(U, grid)--> V (N, C, H', W')

Coordinate convention (MXNet's): theta maps *output* coordinates to *input*
coordinates, both normalised so that -1 and +1 are the centres of the corner
pixels; the grid holds x (width) first, then y. theta = [a, b, tx, c, d, ty]
is the row-major 2x3 matrix of paper eq. 1:

    (x_s, y_s)^T = [[a, b, tx], [c, d, ty]] (x_t, y_t, 1)^T

Samples that fall outside U read zeros (paper eq. 5 with zero padding).
"""
import mxnet as mx
import numpy as np
from mxnet.gluon import nn

IDENTITY = np.array([1, 0, 0, 0, 1, 0], dtype=np.float32)


def affine_sample(F, data, theta, target_shape):
    """Warp ``data`` (N, C, H, W) by ``theta`` (N, 6) onto a ``target_shape`` (H', W') grid.

    Paper eqs. 1 (grid generator) and 5 (bilinear sampler); returns (N, C, H', W').
    """
    grid = F.GridGenerator(theta, transform_type='affine', target_shape=tuple(target_shape))
    return F.BilinearSampler(data, grid)


def default_localisation():
    """The seed port's localisation net: two conv+pool stages and a 32-unit layer."""
    net = nn.HybridSequential(prefix='loc_')
    with net.name_scope():
        net.add(nn.Conv2D(8, kernel_size=7), nn.MaxPool2D(2, 2), nn.Activation('relu'),
                nn.Conv2D(10, kernel_size=5), nn.MaxPool2D(2, 2), nn.Activation('relu'),
                nn.Dense(32, activation='relu'))
    return net


class SpatialTransformer(nn.HybridBlock):
    """Localisation net -> theta -> sampling grid -> bilinear sampling.

    Input (N, C, H, W); returns ``(output, theta)`` with output (N, C, H', W') and
    theta (N, 6). ``target_shape`` (H', W') defaults to the H x W of the first
    input it sees. ``localisation`` is any block mapping the input to a feature
    vector; a 6-unit regressor on top predicts theta. The regressor starts with
    zero weights and the identity bias, so a fresh block returns its input.
    ``loc_lr_mult`` scales the learning rate of the localisation net and the
    regressor (``Parameter.lr_mult``, honoured by ``gluon.Trainer``).
    """

    def __init__(self, target_shape=None, localisation=None, loc_lr_mult=1.0, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(target_shape) if target_shape else None
        with self.name_scope():
            self.localisation = localisation if localisation is not None else default_localisation()
            self.regressor = nn.Dense(6, weight_initializer=mx.init.Zero(), prefix='regressor_',
                                      bias_initializer=mx.init.Constant(IDENTITY))
        for param in self.collect_params().values():
            param.lr_mult = loc_lr_mult

    def default_target_shape(self, x):
        """Set an unset ``target_shape`` to the H x W of ``x``, an NDArray.

        Blocks that hybridize a transformer inside them call this from their own
        ``forward``: inside a graph the input's shape is not known.
        """
        if self.target_shape is None:
            if not isinstance(x, mx.nd.NDArray):
                raise ValueError('SpatialTransformer: pass target_shape=(H, W) to build it '
                                 'on a Symbol; it can only infer it from an NDArray input.')
            self.target_shape = tuple(x.shape[2:])

    def forward(self, x, *args):
        self.default_target_shape(x)
        return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        theta = self.regressor(self.localisation(x))
        return affine_sample(F, x, theta, self.target_shape), theta
