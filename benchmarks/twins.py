"""The PyTorch twins of stn-gluon's networks, for benchmarks/bench_train.py: the same
layers, transformer families, initialisation of the regressor and input standardisation
(``twin(config)`` for a RunConfig), in PyTorch's own modules (affine_grid, grid_sample)."""
import torch
from torch import nn

import net
import stn

relu = nn.ReLU


class Transformer(nn.Module):
    """A spatial transformer of ``family`` on (N, 1, side, side) inputs, as stn.py's."""

    def __init__(self, localisation, family, side, tps_grid):
        super().__init__()
        self.family, self.side = family, side
        self.localisation = localisation
        self.regressor = nn.LazyLinear(stn.theta_size(family, tps_grid))
        constant = stn.grid_constant(family, (side, side), tps_grid)
        self.register_buffer('constant', None if constant is None else
                             torch.tensor(constant).reshape(len(constant), -1))
        self.identity = torch.tensor(stn.identity_theta(family, tps_grid))

    def grid(self, theta):
        n, s = len(theta), self.side
        if self.family in ('affine', 'attention'):
            if self.family == 'attention':
                scale, tx, ty = theta.unbind(1)
                zero = torch.zeros_like(scale)
                theta = torch.stack([scale, zero, tx, zero, scale, ty], 1)
            return nn.functional.affine_grid(theta.view(n, 2, 3), (n, 1, s, s), align_corners=True)
        if self.family == 'projective':
            h = torch.cat([theta, torch.ones(n, 1)], 1).view(n, 3, 3)
            uvw = h @ self.constant                                     # (N, 3, P)
            w = uvw[:, 2:]
            w = torch.where(w >= 0, w.clamp(min=stn.PROJECTIVE_EPS), w.clamp(max=-stn.PROJECTIVE_EPS))
            xy = uvw[:, :2] / w
        else:
            xy = theta.view(n, 2, -1) @ self.constant                   # (N, 2, P)
        return xy.view(n, 2, s, s).permute(0, 2, 3, 1)

    def forward(self, x):
        theta = self.regressor(self.localisation(x))
        return nn.functional.grid_sample(x, self.grid(theta), align_corners=True,
                                         padding_mode='zeros')


def parts(model, width):
    """(classifier, localisation net) of ``model``: 'lenet', 'fcn' or 'cnn' (net.py's)."""
    if model == 'lenet':
        return (nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), relu(), nn.Conv2d(10, 20, 5),
                              nn.Dropout2d(0.5), nn.MaxPool2d(2), relu(), nn.Flatten(),
                              nn.LazyLinear(50), relu(), nn.Dropout(0.5), nn.LazyLinear(10)),
                nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2), relu(), nn.Conv2d(8, 10, 5),
                              nn.MaxPool2d(2), relu(), nn.Flatten(), nn.LazyLinear(32), relu()))
    if model == 'fcn':
        return (nn.Sequential(nn.Flatten(), nn.LazyLinear(width), relu(), nn.LazyLinear(width),
                              relu(), nn.LazyLinear(10)),
                nn.Sequential(nn.Flatten(), *[m for _ in range(3) for m in (nn.LazyLinear(32), relu())]))
    return (nn.Sequential(nn.Conv2d(1, width, 9), relu(), nn.MaxPool2d(2),
                          nn.Conv2d(width, 2 * width, 7, padding=2), relu(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.LazyLinear(10)),
            nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(1, 20, 5), relu(), nn.MaxPool2d(2),
                          nn.Conv2d(20, 20, 5), relu(), nn.Flatten(), nn.LazyLinear(20), relu()))


class Net(nn.Module):
    """net.Net's twin: the transformer, 2x2 average pooling where the config pools, the
    classifier on standardised pixels."""

    def __init__(self, config):
        super().__init__()
        self.side = config.image_shape[-1]
        classifier, localisation = parts(config.model, config.width)
        self.stn = Transformer(localisation, config.transform, self.side, config.tps_grid) \
            if config.transform != 'none' else None
        self.pool = nn.AvgPool2d(2) if config.pool_after_stn else None
        self.classifier = classifier

    def forward(self, x):
        if self.stn is not None:
            x = self.stn(x)
            if self.pool is not None:
                x = self.pool(x)
        return self.classifier((x - net.MEAN) / net.STD)


def twin(config):
    """(the PyTorch twin of net.build(config), its input side), its lazy layers made and
    its transformer starting at the identity, as stn-gluon's."""
    model = Net(config)
    model(torch.zeros(2, 1, model.side, model.side))   # materialise the lazy layers
    if model.stn is not None:
        with torch.no_grad():
            model.stn.regressor.weight.zero_()
            model.stn.regressor.bias.copy_(model.stn.identity)
    return model, model.side
