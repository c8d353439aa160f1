"""The classifier: the seed port's LeNet with a spatial transformer in front.

    x (N, 1, H, W) -> [SpatialTransformer] -> LeNet -> logits (N, 10)

The dense layers infer their input size on the first batch, so the same code
takes 28x28, 42x42 or 60x60 digits.
"""
from mxnet.gluon import nn

from stn import SpatialTransformer


def lenet(num_classes=10):
    """Conv(10, k5) -> pool -> relu -> Conv(20, k5) -> channel dropout -> pool -> relu
    -> Dense(50, relu) -> dropout -> Dense(num_classes)."""
    net = nn.HybridSequential(prefix='lenet_')
    with net.name_scope():
        net.add(nn.Conv2D(10, kernel_size=5), nn.MaxPool2D(2, 2), nn.Activation('relu'),
                nn.Conv2D(20, kernel_size=5), nn.Dropout(0.5, axes=(2, 3)),  # like Dropout2d
                nn.MaxPool2D(2, 2), nn.Activation('relu'),
                nn.Flatten(), nn.Dense(50, activation='relu'), nn.Dropout(0.5),
                nn.Dense(num_classes))
    return net


class Net(nn.HybridBlock):
    """LeNet, with a ``SpatialTransformer`` (``self.stn``) in front when ``use_stn``.

    Input (N, 1, H, W); output logits (N, num_classes). The transformer's output
    and theta for a batch: ``net.stn(x)`` -> ``(output, theta)``.
    """

    def __init__(self, use_stn=True, num_classes=10, loc_lr_mult=1.0, prefix='net_', **kwargs):
        super().__init__(prefix=prefix, **kwargs)
        with self.name_scope():
            self.stn = SpatialTransformer(loc_lr_mult=loc_lr_mult, prefix='stn_') if use_stn else None
            self.classifier = lenet(num_classes)

    def forward(self, x, *args):
        if self.stn is not None:
            self.stn.default_target_shape(x)
        return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        if self.stn is not None:
            x, _ = self.stn(x)
        return self.classifier((x - 0.1307) / 0.3081)
