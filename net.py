"""The classifiers: the original port's LeNet and the paper's FCN and CNN, each with an
optional spatial transformer of any family (stn.py) in front.

    x (N, 1, H, W) -> [SpatialTransformer] -> [2x2 average pooling] -> classifier -> logits (N, 10)

``Net()`` is the original port's network: an affine transformer with its localisation net in
front of LeNet. The paper's models (its distorted-MNIST experiments, section 4.1), ReLU
throughout:

    model  classifier (width w)              localisation (with a transformer)
    lenet  LeNet (w unused)                  the port's: conv 7x7 (8) -> maxpool 2x2
                                             -> conv 5x5 (10) -> maxpool 2x2 -> fc 32
    fcn    FCN: fc w -> fc w -> fc 10        ST-FCN: fc 32 -> fc 32 -> fc 32
    cnn    CNN: conv 9x9 (w) -> maxpool 2x2  ST-CNN: on the input average-pooled 2x2,
           -> conv 7x7 (2w) -> maxpool 2x2   conv 5x5 (20) -> maxpool 2x2 -> conv 5x5 (20)
           -> fc 10 (the 7x7 conv zero-      -> fc 20
           padded by 2, so that 21x21
           inputs fit too)

and then the transformer's regressor (6, 3, 8 or 2K outputs). ``pool_after_stn`` adds the
2x2 average pooling between the transformer and the classifier that the paper uses for
RTS and TC (train.py turns it on for those sets with fcn and cnn); a network without a
transformer never pools, its classifier sees the full image.

Sizes. The sources fix the layers but not the FCN/CNN widths; the paper only says that
all models of one experiment have about the same number of parameters. So each
experiment (input size) has a budget, ``BUDGETS``, and ``fit_width`` picks the classifier
width w that brings each model, localisation net included, closest to it: the baselines
get wider classifiers than their ST versions. The budget grows with the input so that
the largest localisation net (ST-FCN's, whose first layer sees every pixel: 27k
parameters at 28x28, 59k at 42x42, 118k at 60x60) stays below half of the model.
Trainable parameters with the fitted widths (``python train.py --summary`` prints
them per layer; the projective and TPS grid constants are not counted):

    experiment (side)    budget   model             none     affine  attention projective        tps
    mnist, r, p, e (28)  150,000  FCN  width         157        132        132        132        131
                                       params    149,631    149,936    149,837    150,002    149,735
                                  CNN  width          37         36         36         36         36
                                       params    149,120    152,648    152,585    152,690    153,194
    rts (42, pooled 21)  200,000  FCN  width         106        212        212        212        211
                                       params    199,502    199,780    199,681    199,846    199,762
                                  CNN  width          40         42         42         42         42
                                       params    199,370    196,856    196,793    196,898    197,402
    tc (60, pooled 30)   250,000  FCN  width          68        127        128        127        127
                                       params    250,250    249,505    250,573    249,571    250,363
                                  CNN  width          38         44         44         44         44
                                       params    254,154    250,600    250,537    250,642    251,146

('none' is the baseline; 'pooled 21': the transformer's 42x42 output is average-pooled to
21x21, in the models with a transformer only.)

The original port's LeNet has 21,840 parameters at 28x28, 27,360 with its affine transformer.
The dense layers infer their input size on the first batch, so the same code takes
28x28, 42x42 or 60x60 digits.
"""
from stngluon import compat  # noqa: F401  (before mxnet)
import mxnet as mx
from mxnet.gluon import nn

from stn import SpatialTransformer, default_localisation
from stngluon import ops, runtime

try:   # the dtype MXNet's operators take for bfloat16 (numpy has none of its own)
    from mxnet.contrib.amp.amp import bfloat16 as BFLOAT16
except ImportError:   # pragma: no cover (an MXNet without AMP)
    BFLOAT16 = None

MODELS = ('lenet', 'fcn', 'cnn')
BUDGETS = {28: 150_000, 42: 200_000, 60: 250_000}   # parameters per experiment, by input side
DEFAULT_WIDTH = {'fcn': 128, 'cnn': 32}             # when Net is given no width
MEAN, STD = 0.1307, 0.3081   # MNIST's pixel mean and std: the classifier standardises its input
# what the classifier subtracts from its input and divides it by (train.py --input-norm)
INPUT_NORMS = {'mnist': (MEAN, STD), 'none': (0.0, 1.0)}


def standardise(F, x, mean, std):
    """(x - mean) / std, elementwise: ``stn_standardise`` (ops/standardise.cc), one pass,
    where the operator library loads; MXNet's _minus_scalar and _div_scalar otherwise. The
    same bits either way, forward and backward."""
    if ops.load():
        return F.stn_standardise(x, mean=mean, std=std)
    return (x - mean) / std


class AvgPool2x2(nn.AvgPool2D):
    """nn.AvgPool2D(2, 2) (the same function, bits and node name), computed by
    ``stn_avg_pool2`` (ops/avg_pool.cc) where the operator library loads: MXNet's Pooling
    takes a fifth of the ST-FCN's training step on these one-channel images."""

    def __init__(self):
        super().__init__(2, 2)

    def hybrid_forward(self, F, x):
        if ops.load():
            return F.stn_avg_pool2(x, name='fwd')
        return super().hybrid_forward(F, x)


class InputDense(nn.Dense):
    """nn.Dense (the same parameters and function) on the network's input, computed by
    ``stn_input_dense`` (ops/dense.cc) where the operator library loads: the FCN's first
    layer, whose product with the whole image oneDNN computes slowly on some CPUs. Its
    input gets no gradient (``BlockGrad``: nothing uses it, and the operator skips it). The
    last bits differ from FullyConnected's; which of the two is faster depends on the CPU,
    and runtime.py chooses (STN_INPUT_DENSE)."""

    def _alias(self):   # named as nn.Dense is, so that the weights load into either
        return 'dense'

    @property
    def operator(self):
        """What computes it: 'stn_input_dense' where runtime.py chose the library's (or
        STN_INPUT_DENSE=library) and it loads, else 'FullyConnected'."""
        library = runtime.input_dense_library() and self._flatten and ops.load()
        return 'stn_input_dense' if library else 'FullyConnected'

    def hybrid_forward(self, F, x, weight, bias=None):
        x = F.BlockGrad(x)   # stn_input_dense leaves the input's gradient unwritten
        if bias is None or self.operator != 'stn_input_dense':
            return super().hybrid_forward(F, x, weight, bias)
        relu = self.act is not None and self.act._act_type == 'relu'   # computed with it
        out = F.stn_input_dense(x, weight, bias, num_hidden=self._units, name='fwd',
                                **({'act_type': 'relu'} if relu else {}))
        return out if self.act is None or relu else self.act(out)


class InBfloat16:
    """A layer whose arithmetic runs in bfloat16: its input, weight and bias are cast on the
    way in and its output back to float32, so its parameters, their gradients and the
    optimizer's state stay float32 (the cast's backward pass casts the gradient back).
    oneDNN computes bfloat16 convolutions and dense layers natively on CPUs with AVX-512
    bf16. The parameters keep the float32 layer's names, so the weights load into either."""

    def _alias(self):   # what the float32 layer calls itself in parameter names
        return self.ALIAS

    def hybrid_forward(self, F, x, weight, bias=None):
        def cast(a):
            return None if a is None else F.amp_cast(a, dtype=BFLOAT16)
        return F.amp_cast(super().hybrid_forward(F, cast(x), cast(weight), cast(bias)),
                          dtype='float32')


class PaddedChannels:
    """A convolution computed on channels zero-padded to a multiple of ``block``: the same
    parameters (names, shapes, initial values) and the same function, about twice as fast on
    CPUs for the CNN's 36-44 filters. MXNet 1.9.1's oneDNN (2.4) runs its AVX-512 convolution
    kernels only on channel counts that are multiples of 16 and otherwise falls back to its
    AVX2 or gemm kernels; newer oneDNNs pad by themselves. ``runtime.channel_block`` picks
    the block.

    The weight and bias gain zero rows up to the padded output channels, which therefore
    come out zero (before and after the ReLU), and the layer's output keeps them. With
    ``padded_input=c``, the input arrives as c channels padded the same way (a padded
    convolution's output) and the weight gains zero columns to match; otherwise it is taken
    as it comes. ``FirstChannels`` drops the padding. ``block=1``: the convolution as it is.
    The weight's shape waits for the first batch as nn.Conv2D's does, so a seed draws the
    same initial weights at any block."""

    def __init__(self, channels, kernel_size, block=1, padded_input=0, **kwargs):
        super().__init__(channels, kernel_size, **kwargs)
        self._pad_in, self._pad_out = -padded_input % block, -channels % block
        self._padded_input = padded_input
        self._kwargs['num_filter'] = channels + self._pad_out

    def hybrid_forward(self, F, x, weight, bias=None):
        def zeros(count, axis):   # the weight's shape with ``count`` along ``axis``
            other = tuple(a for a in range(4) if a != axis)
            shape = tuple(count if a == axis else 1 for a in range(4))
            return F.broadcast_like(F.zeros(shape), weight, lhs_axes=other, rhs_axes=other)
        if self._pad_in:   # its shape, which MXNet infers through a reshape, not through concat
            weight = F.reshape(weight, (self._channels, self._padded_input,
                                        *self._kwargs['kernel']))
            weight = F.concat(weight, zeros(self._pad_in, 1), dim=1)
        if self._pad_out:
            weight = F.concat(weight, zeros(self._pad_out, 0), dim=0)
            bias = None if bias is None else F.concat(bias, F.zeros((self._pad_out,)), dim=0)
        return super().hybrid_forward(F, x, weight, bias)


class ChannelPaddedConv2D(PaddedChannels, nn.Conv2D):
    """nn.Conv2D on padded channels (``PaddedChannels``)."""


class FirstChannels(nn.HybridBlock):
    """(N, C, H, W) -> (N, channels, H, W): a padded convolution's output without its padding."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def hybrid_forward(self, F, x):
        return F.slice_axis(x, axis=1, begin=0, end=self.channels)


class Conv2DBfloat16(PaddedChannels, InBfloat16, nn.Conv2D):   # padded, then cast
    ALIAS = 'conv'


class DenseBfloat16(InBfloat16, nn.Dense):
    ALIAS = 'dense'


# the classifier's weight layers, by train.py's --precision: (Conv2D, Dense)
PRECISIONS = {'float32': (ChannelPaddedConv2D, nn.Dense),
              'bfloat16': (Conv2DBfloat16, DenseBfloat16)}


def lenet(num_classes=10, width=None, precision='float32'):
    """Conv(10, k5) -> pool -> relu -> Conv(20, k5) -> channel dropout -> pool -> relu
    -> Dense(50, relu) -> dropout -> Dense(num_classes). ``width`` is ignored."""
    Conv2D, Dense = PRECISIONS[precision]
    net = nn.HybridSequential(prefix='lenet_')
    with net.name_scope():
        net.add(Conv2D(10, kernel_size=5), nn.MaxPool2D(2, 2), nn.Activation('relu'),
                Conv2D(20, kernel_size=5), nn.Dropout(0.5, axes=(2, 3)),  # like Dropout2d
                nn.MaxPool2D(2, 2), nn.Activation('relu'),
                nn.Flatten(), Dense(50, activation='relu'), nn.Dropout(0.5),
                Dense(num_classes))
    return net


def fcn(num_classes=10, width=DEFAULT_WIDTH['fcn'], precision='float32', on_input=False):
    """The paper's FCN baseline: Dense(width, relu) -> Dense(width, relu) -> Dense(num_classes).
    ``on_input``: the first layer reads the network's input (``InputDense`` in float32)."""
    _, Dense = PRECISIONS[precision]
    First = InputDense if on_input and precision == 'float32' else Dense
    net = nn.HybridSequential(prefix='fcn_')
    with net.name_scope():
        net.add(First(width, activation='relu'), Dense(width, activation='relu'),
                Dense(num_classes))
    return net


def cnn(num_classes=10, width=DEFAULT_WIDTH['cnn'], precision='float32', channel_block=1):
    """The paper's CNN baseline: Conv(width, 9x9) -> maxpool 2x2 -> Conv(2 width, 7x7)
    -> maxpool 2x2 -> Dense(num_classes), ReLU after each conv. The first conv is unpadded;
    the second is zero-padded by 2, the least with which a 21x21 input still fits (21 -> 13
    -> 6 -> 4 -> 2; 28 -> 20 -> 10 -> 8 -> 4). ``channel_block``: the convolutions compute
    on channels padded to a multiple of it (``PaddedChannels``), the same function."""
    Conv2D, Dense = PRECISIONS[precision]
    net = nn.HybridSequential(prefix='cnn_')
    with net.name_scope():
        net.add(Conv2D(width, kernel_size=9, activation='relu', block=channel_block),
                nn.MaxPool2D(2, 2),
                Conv2D(2 * width, kernel_size=7, padding=2, activation='relu',
                       block=channel_block, padded_input=width),
                nn.MaxPool2D(2, 2))
        if (2 * width) % channel_block:
            net.add(FirstChannels(2 * width))
        net.add(Dense(num_classes))
    return net


def fcn_localisation():
    """ST-FCN localisation: three Dense(32, relu) layers (the regressor follows)."""
    net = nn.HybridSequential(prefix='loc_')
    with net.name_scope():
        net.add(*[nn.Dense(32, activation='relu') for _ in range(3)])
    return net


def cnn_localisation():
    """ST-CNN localisation, on the input downsampled 2x (2x2 average pooling): Conv(20, 5x5)
    -> maxpool 2x2 -> Conv(20, 5x5) -> Dense(20), ReLU after each (the regressor follows)."""
    net = nn.HybridSequential(prefix='loc_')
    with net.name_scope():
        net.add(AvgPool2x2(), nn.Conv2D(20, kernel_size=5, activation='relu'),
                nn.MaxPool2D(2, 2), nn.Conv2D(20, kernel_size=5, activation='relu'),
                nn.Dense(20, activation='relu'))
    return net


def feature_localisation():
    """For a transformer on a CNN feature map (ST-CNN Multi style, section 4.2): conv 1x1
    (8) -> max-pool 2x2 -> fc 32 -> fc 32, ReLU after each (the paper's two 32-unit layers,
    after a 1x1 convolution and pooling that keep them small)."""
    net = nn.HybridSequential(prefix='loc_')
    with net.name_scope():
        net.add(nn.Conv2D(8, kernel_size=1, activation='relu'), nn.MaxPool2D(2, 2),
                nn.Dense(32, activation='relu'), nn.Dense(32, activation='relu'))
    return net


# Where a CNN takes transformers, in series: on the input, and on the feature map of its
# first stage (conv 9x9 -> max-pool), before its second convolution ('conv1').
PLACES = ('input', 'conv1')


def feature_side(side, pooled):
    """The side of the CNN's first-stage feature map for a classifier input of ``side``
    pixels (halved first if ``pooled``): the unpadded 9x9 conv, then 2x2 max-pooling."""
    return ((side // 2 if pooled else side) - 8) // 2


def feature_to_input(feature_side, pooled, side):
    """(a, b) with n = a g + b: the normalised coordinate n on the classifier's input side
    (or the input transformer's output, ``side`` pixels) of the centre of the receptive field
    of feature-map point g (normalised, ``feature_side`` pixels): feature pixel u sits at
    conv pixel 2u + 0.5 (2x2 max-pool), i.e. input pixel 2u + 4.5 (unpadded 9x9 conv), and
    at 2(2u + 4.5) + 0.5 before the 2x2 average pooling when ``pooled``."""
    a, b = (feature_side - 1) / 2, (feature_side - 1) / 2          # g -> u
    a, b = 2 * a, 2 * b + 4.5                                      # u -> classifier pixel
    if pooled:
        a, b = 2 * a, 2 * b + 0.5                                  # -> transformer pixel
    return 2 * a / (side - 1), 2 * b / (side - 1) - 1              # -> normalised


def feature_region(F, feature_grid, input_grid, target_shape, a, b):
    """Where a feature-map transformer reads, as input points: its ``feature_grid``
    (N, 2, h, w) resampled to ``target_shape`` (H', W'), mapped by ``feature_to_input``'s
    (a, b) and, after a transformer on the input, through that one's ``input_grid``
    (N, 2, H', W'; None if there is none). Returns a grid (N, 2, H', W') in the input's
    normalised coordinates, for outlines and for sampling the input."""
    height, width = target_shape
    fine = F.contrib.BilinearResize2D(feature_grid, height=height, width=width, align_corners=True)
    mapped = fine * a + b
    return mapped if input_grid is None else F.BilinearSampler(input_grid, mapped)


CLASSIFIERS = {'lenet': lenet, 'fcn': fcn, 'cnn': cnn}
LOCALISATIONS = {'lenet': default_localisation, 'fcn': fcn_localisation, 'cnn': cnn_localisation}


class ParallelTransformers(nn.HybridBlock):
    """K spatial transformers side by side (the paper's 2xST, appendix A.1): each reads
    the whole input (N, C, H, W) and warps all its channels; the outputs are concatenated,
    (N, K*C, H', W'), and so are the thetas, (N, K*T). ``per_channel``: transformer k
    passes on channel k of its output only (one transformer per digit of a K-channel
    input), (N, K, H', W'). ``make(k)`` builds the k-th transformer (named
    PREFIX_stn{k}_...)."""

    def __init__(self, count, make, per_channel=False, **kwargs):
        super().__init__(**kwargs)
        self.per_channel = per_channel
        self.transformers = []
        for k in range(count):
            transformer = make(k)
            self.register_child(transformer, f'stn{k}')
            self.transformers.append(transformer)

    def default_target_shape(self, x):
        if self.per_channel and x.shape[1] != len(self.transformers):
            raise ValueError(f'{len(self.transformers)} transformers, one per channel, need '
                             f'{len(self.transformers)}-channel inputs, not {x.shape[1]}')
        for transformer in self.transformers:
            transformer.default_target_shape(x)

    def hybrid_forward(self, F, x):
        outputs, thetas = zip(*[transformer(x) for transformer in self.transformers])
        if self.per_channel:   # passed_channels, as slices of the graph
            outputs = [F.slice_axis(out, axis=1, begin=k, end=k + 1) for k, out in enumerate(outputs)]
        return F.concat(*outputs, dim=1), F.concat(*thetas, dim=1)


def passed_channels(channels):
    """With one transformer per channel (per_channel), the channels of the transformers'
    concatenated outputs (N, K*C, H', W'), K = C, that the network passes on: channel k of
    transformer k."""
    return [k * channels + k for k in range(channels)]


class Net(nn.HybridBlock):
    """A ``model`` classifier ('lenet', 'fcn', 'cnn'), with a ``SpatialTransformer``
    (``self.stn``) of family ``transform`` ('affine', 'attention', 'projective', 'tps';
    'none' for none) and the model's localisation net in front.

    Input (N, 1, H, W); output logits (N, num_classes). The transformer's output
    and theta for a batch: ``net.stn(x)`` -> ``(output, theta)``. ``width``: the FCN's
    hidden units, the CNN's first-layer filters (default ``DEFAULT_WIDTH``; see
    ``fit_width``). ``pool_after_stn``: 2x2 average pooling of the transformer's
    output (no effect without a transformer). ``tps_grid``: the TPS control grid.
    ``transformers``: that many transformers side by side on the input
    (``ParallelTransformers``, the paper's 2xST; ``per_channel``: one per input
    channel). ``places``: where the CNN takes transformers, in series, some of PLACES:
    'input' (``self.stn``) and 'conv1', on the first stage's feature map
    (``self.feature_stn``, named PREFIX_stn_conv1_..., with ``feature_localisation``; it
    warps every channel). ``input_norm``: the classifier sees (x - mean) / std, with
    INPUT_NORMS' MNIST mean and std ('mnist') or x itself ('none'). ``precision``: the
    classifier's convolutions and dense layers in 'float32' or 'bfloat16' (``InBfloat16``);
    the transformers stay float32. ``iterations``, ``loc_per_step``: each transformer's
    compositional steps and whether each step has its own localisation net
    (``SpatialTransformer``'s iterations and per_step: IC-STN, c-STN). ``channel_block``:
    the CNN classifier's convolutions compute on channels padded to a multiple of it
    (``PaddedChannels``; the same parameters and function, faster where oneDNN wants
    it: ``runtime.channel_block``); not with a transformer at conv1. ``self.channel_block``:
    the block the classifier computes in (1 where nothing is padded).
    """

    def __init__(self, transform='affine', num_classes=10, loc_lr_mult=1.0, model='lenet',
                 width=None, pool_after_stn=False, tps_grid=4, transformers=1, places=('input',),
                 input_norm='mnist', per_channel=False, precision='float32', iterations=1,
                 loc_per_step=False, channel_block=1, prefix='net_', **kwargs):
        super().__init__(prefix=prefix, **kwargs)
        if model not in MODELS:
            raise ValueError(f'model must be one of {MODELS}, not {model!r}')
        if transformers < 1:
            raise ValueError(f'transformers must be >= 1, not {transformers}')
        places = tuple(places)
        if not places or any(p not in PLACES for p in places) \
                or ('conv1' in places and model != 'cnn'):
            raise ValueError(f'places must be some of {PLACES} (conv1 for model cnn only), '
                             f'not {places}')
        if transformers > 1 and places != ('input',):
            raise ValueError('transformers side by side go on the input only')
        if per_channel and (transformers < 2 or transform == 'none'):
            raise ValueError('per_channel needs transformers side by side (transformers >= 2)')
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {tuple(PRECISIONS)}, not {precision!r}')
        if input_norm not in INPUT_NORMS:
            raise ValueError(f'input_norm must be one of {tuple(INPUT_NORMS)}, not {input_norm!r}')
        self.mean, self.std = INPUT_NORMS[input_norm]
        with self.name_scope():
            self.stn = self.feature_stn = None
            def make(name, localisation=LOCALISATIONS[model], input_grad=False):
                """A transformer: on the input the images need no gradient (input_grad), at
                conv1 the features do."""
                return SpatialTransformer(
                    localisation=localisation, loc_lr_mult=loc_lr_mult, transform=transform,
                    tps_grid=tps_grid, iterations=iterations, per_step=loc_per_step,
                    input_grad=input_grad, prefix=name)
            if transform != 'none' and 'input' in places and transformers == 1:
                self.stn = make('stn_')
            elif transform != 'none' and 'input' in places:
                self.stn = ParallelTransformers(transformers, lambda k: make(f'stn{k}_'),
                                                per_channel=per_channel, prefix='')
            self.pool = AvgPool2x2() if pool_after_stn and self.stn is not None else None
            # the block the classifier computes in (a transformer at conv1 sees plain channels)
            self.channel_block = channel_block if model == 'cnn' and 'conv1' not in places else 1
            extra = ({'channel_block': self.channel_block} if model == 'cnn' else
                     {'on_input': self.stn is None} if model == 'fcn' else {})
            self.classifier = CLASSIFIERS[model](num_classes, width or DEFAULT_WIDTH.get(model),
                                                 precision, **extra)
            if transform != 'none' and 'conv1' in places:
                self.feature_stn = make('stn_conv1_', feature_localisation, input_grad=True)

    @property
    def input_dense(self):
        """What computes the classifier's first layer where it reads the input image
        (``InputDense.operator``), else None."""
        first = self.classifier[0]
        return first.operator if isinstance(first, InputDense) else None

    def forward(self, x, *args):
        if self.stn is not None:
            self.stn.default_target_shape(x)
        if self.feature_stn is not None:
            self.feature_stn.set_target_shape(
                [feature_side(n, self.pool is not None) for n in x.shape[2:]])
        return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        if self.stn is not None:
            x, _ = self.stn(x)
            if self.pool is not None:
                x = self.pool(x)
        x = standardise(F, x, self.mean, self.std)
        if self.feature_stn is None:
            return self.classifier(x)
        for k in range(len(self.classifier)):
            if k == 2:   # before conv1: warp the first stage's feature map, every channel
                x, _ = self.feature_stn(x)
            x = self.classifier[k](x)
        return x


def trainable_params(block):
    """The number of trained parameters of an initialized block (grid constants excluded)."""
    return sum(p.data().size for p in block.collect_params().values() if p.grad_req != 'null')


def count_params(image_shape, **net_kwargs):
    """Trainable parameters of ``Net(**net_kwargs)`` for inputs of ``image_shape`` (C, H, W)."""
    net = Net(**net_kwargs)
    net.initialize(mx.init.Zero())
    net(mx.nd.zeros((1, *image_shape)))
    return trainable_params(net)


def build(config, channel_block=1):
    """The Net of a run's settings (a config.RunConfig; its width fitted where unset);
    ``channel_block``: Net's, how the CNN's convolutions compute (not a setting of the run:
    the same function and parameters either way)."""
    config = config.resolved()
    return Net(model=config.model, transform=config.transform, width=config.width,
               pool_after_stn=config.pool_after_stn, tps_grid=config.tps_grid,
               loc_lr_mult=config.loc_lr_mult, num_classes=config.num_classes,
               transformers=config.transformers, places=config.stn_at,
               input_norm=config.input_norm, per_channel=config.per_channel,
               precision=config.precision, iterations=config.iterations,
               loc_per_step=config.loc_per_step, channel_block=channel_block)


def display_name(model='lenet', transform='affine', transformers=1, stn_at=('input',),
                 per_channel=False, iterations=1, loc_per_step=False):
    """The network's name in headers and legends: 'STN (affine) + LeNet' (the port's LeNet),
    '2xST-CNN (tps) at conv1', 'FCN', 'IC-STN-4 (affine) + CNN', 'c-STN-2 (projective) +
    FCN', ..."""
    name = {'lenet': 'LeNet', 'fcn': 'FCN', 'cnn': 'CNN'}[model]
    if transform == 'none':
        return name
    count = f'{transformers}x' if transformers > 1 else ''
    if iterations > 1:
        count += f'{"c" if loc_per_step else "IC"}-STN-{iterations} ({transform}) + '
        return count + name + ('' if list(stn_at) == ['input'] else f' at {",".join(stn_at)}')
    if model == 'lenet':
        return f'{count}STN ({transform}) + LeNet'
    at = '' if list(stn_at) == ['input'] else f' at {",".join(stn_at)}'
    at += ', one per channel' if per_channel else ''
    return f'{count}ST-{name} ({transform}){at}'


def parameter_budget(image_shape, mult=1.0):
    """The experiment's parameter budget for inputs of ``image_shape`` (C, H, W): BUDGETS[H]
    per input channel, times ``mult``; None for a side BUDGETS has no budget for."""
    channels, side = image_shape[:2]
    return round(mult * BUDGETS[side] * channels) if side in BUDGETS else None


def fit_width(model, transform, image_shape, budget=None, **net_kwargs):
    """The width whose ``Net(model=model, transform=transform, width=...)`` has the number
    of trainable parameters closest to ``budget`` (default ``BUDGETS[H]`` per input
    channel) for inputs of ``image_shape`` (C, H, W); the parameter count grows with the
    width."""
    if budget is None:
        budget = parameter_budget(image_shape)
        if budget is None:
            raise ValueError(f'no parameter budget for {image_shape[1]}-pixel inputs '
                             f'(BUDGETS has {sorted(BUDGETS)}): pass budget')

    def count(width):
        return count_params(image_shape, model=model, transform=transform, width=width,
                            **net_kwargs)

    low, high = 1, 1024   # count(low) < budget <= count(high), else the end is the answer
    if count(low) >= budget:
        return low
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < budget else (low, middle)
    return min((low, high), key=lambda w: abs(count(w) - budget))
