"""RunConfig: the settings that make a training run what it is, in one object.

In the spirit of nanoGPT's GPTConfig: a dataclass whose fields are train.py's run flags
(with their defaults), checked when it is made, converted to and from flags
(``from_flags``, ``flags``) and config.json (``from_saved``, ``as_dict``), and the one
home of the facts derived from them: the input's shape, classes and channels, whether the
transformer's output is pooled, the parameter budget and the width fitted to it, and the
network's name. train.py, reproduce.py, the benchmarks and the tests build one; net.build,
engine.GluonModel and symbolic.ModuleModel take one.

    config = RunConfig(dataset='rts', model='cnn', transform='tps').resolved()
    config.image_shape, config.pool_after_stn, config.width, config.display_name
"""
import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional

from stngluon import distort

# Of the run's settings, only these may be given anew on the command line when resuming.
CHANGEABLE = ('epochs', 'lr')   # extend a run; a smaller rate after a divergence
# config.json files written before these settings existed ran with their defaults, or where
# the default has changed since, with the value in SAVED_BEFORE
ADDED_LATER = ('lr_mode', 'warmup_epochs', 'transformers', 'stn_at', 'input_norm', 'per_channel',
               'precision', 'iterations', 'loc_per_step')
SAVED_BEFORE = {'precision': 'float32'}


API, OPTIMIZERS = ('gluon', 'symbol'), ('adam', 'sgd')


class ConfigError(ValueError):
    """A setting that no run can have; the message names its flag."""


@dataclass
class RunConfig:
    """train.py's run flags. ``width`` None: fitted to the budget by ``resolved()``."""
    api: str = 'gluon'                 # gluon (HybridBlocks, gluon.Trainer) or symbol (mx.mod.Module)
    dataset: str = 'mnist'             # distort.DATASETS
    data_seed: int = 0                 # seed of the distorted sets
    fresh_distortions: bool = False    # distort the training digits anew every epoch
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.001
    lr_steps: List[int] = field(default_factory=lambda: [12, 16])
    lr_factor: float = 0.1
    lr_mode: str = 'step'              # engine.LR_MODES
    warmup_epochs: float = 0
    optimizer: str = 'adam'            # adam or sgd
    momentum: float = 0.9              # sgd
    loc_lr_mult: float = 0.1           # learning-rate multiplier of the localisation nets
    seed: int = 1
    train_size: Optional[int] = None   # the first N training images only
    model: str = 'lenet'               # net.MODELS
    transform: str = 'affine'          # 'none' or stn.TRANSFORMS
    tps_grid: int = 4                  # N x N control points
    width: Optional[int] = None        # fcn: hidden units, cnn: first-layer filters
    transformers: int = 1              # side by side
    stn_at: List[str] = field(default_factory=lambda: ['input'])   # net.PLACES, in series
    input_norm: str = 'mnist'          # net.INPUT_NORMS
    per_channel: bool = False          # transformer k passes on channel k only
    budget_mult: float = 1.0           # fit fcn/cnn to this multiple of the budget
    precision: str = 'auto'            # the classifier's arithmetic: net.PRECISIONS; 'auto' is
                                       # replaced by auto_precision's choice when made
    iterations: int = 1                # compositional steps of each transformer (IC-STN)
    loc_per_step: bool = False         # a localisation net per step (c-STN), not shared

    def __post_init__(self):
        if isinstance(self.lr_steps, tuple):
            self.lr_steps = list(self.lr_steps)
        if isinstance(self.stn_at, tuple):
            self.stn_at = list(self.stn_at)
        if self.precision == 'auto':
            self.precision = auto_precision(self.model, self.transform, self.api)
        check(self)

    # ---- the facts derived from the settings ------------------------------------------
    @property
    def image_shape(self):
        """(C, H, W) of the dataset's images."""
        return distort.image_shape(self.dataset)

    @property
    def channels(self):
        return self.image_shape[0]

    @property
    def num_classes(self):
        return distort.num_classes(self.dataset)

    @property
    def pool_after_stn(self):
        """The paper's 2x2 average pooling after the transformer: FCN and CNN on the canvases
        larger than MNIST's 28x28 (RTS and addition 42x42, TC 60x60)."""
        return self.image_shape[-1] > 28 and self.model in ('fcn', 'cnn') and self.transform != 'none'

    @property
    def budget(self):
        """The parameter budget fcn/cnn are fitted to: the experiment's (net.BUDGETS, per
        input channel) times ``budget_mult``."""
        import net
        return net.parameter_budget(self.image_shape, self.budget_mult)

    def resolved(self):
        """This config with the width that brings fcn/cnn to ``budget`` (net.fit_width)
        where none is set."""
        if self.width is not None or self.model == 'lenet':
            return self
        import net
        return dataclasses.replace(self, width=net.fit_width(
            self.model, self.transform, self.image_shape, budget=self.budget,
            pool_after_stn=self.pool_after_stn, tps_grid=self.tps_grid,
            num_classes=self.num_classes, transformers=self.transformers, places=self.stn_at,
            per_channel=self.per_channel, iterations=self.iterations,
            loc_per_step=self.loc_per_step))

    @property
    def display_name(self):
        """The network by name (``net.display_name``): 'STN (affine) + LeNet', 'FCN', ..."""
        import net
        return net.display_name(self.model, self.transform, self.transformers, self.stn_at,
                                self.per_channel, self.iterations, self.loc_per_step)

    @property
    def input_dense(self):
        """Whether the network's first layer reads the input image (net.InputDense: the FCN
        baseline in float32)."""
        return self.model == 'fcn' and self.transform == 'none' and self.precision == 'float32'

    @property
    def network_name(self):
        """What runtime.py caches execution settings under: 'ST-CNN (affine) on rts, batch 64',
        'CNN in bfloat16 on tc, batch 64'."""
        precision = f' in {self.precision}' if self.precision != 'float32' else ''
        return f'{self.display_name}{precision} on {self.dataset}, batch {self.batch_size}'

    # ---- conversions ------------------------------------------------------------------
    @classmethod
    def names(cls):
        """The settings' names, which are train.py's flags with - for _."""
        return [f.name for f in dataclasses.fields(cls)]

    def as_dict(self):
        return dataclasses.asdict(self)

    def flags(self):
        """train.py's command-line flags for these settings."""
        return as_flags(self.as_dict())

    @classmethod
    def from_flags(cls, argv):
        """The config of train.py's run flags ``argv``; exits with a usage message (argparse)
        on a bad one, as train.py does."""
        p = argparse.ArgumentParser(prog='train.py (run settings)')
        add_flags(p)
        return of_namespace(p, p.parse_args(argv))

    @classmethod
    def from_saved(cls, saved, where='config.json'):
        """The config a run's config.json (a dict) records. Settings added later take their
        defaults in older files; other keys (results, the host) are left out, and so is
        budget_mult (the width it chose is recorded). ConfigError if a setting is missing or
        no run could have it."""
        keep = {**SAVED_BEFORE,
                **{k: v for k, v in saved.items() if k in cls.names() and k != 'budget_mult'}}
        missing = [k for k in cls.names() if k not in keep and k not in ADDED_LATER
                   and k != 'budget_mult']   # which the width it fitted records
        if missing:
            raise ConfigError(f'{where} is missing or lacks {missing}')
        try:
            return cls(**keep)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f'{where} holds a setting the command line would reject: {e}') \
                from None


def auto_precision(model, transform, api='gluon'):
    """What --precision auto trains in: bfloat16 for the CNN baselines (--model cnn, no
    transformer, --api gluon) on a CPU that computes bfloat16 natively (AVX-512 bf16), where
    it was measured 1.6-1.7x as fast as float32 with test error within float32's seed
    spread on all five sets (docs/speed.md#bfloat16); float32 everywhere else: the FCN,
    where it was not faster, and the networks it has not been measured on."""
    from stngluon import runtime
    baseline = model == 'cnn' and transform == 'none' and api == 'gluon'
    return 'bfloat16' if baseline and runtime.bfloat16_native() else 'float32'


def as_flags(settings):
    """train.py's flags for ``settings`` ({RunConfig field: value}, in their order): a list
    as 1,2, a number in its shortest exact form, None and False left out."""
    argv = []
    for key, value in settings.items():
        flag = '--' + key.replace('_', '-')
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, list):
            argv += [flag, ','.join(map(str, value))]
        elif isinstance(value, float):
            argv += [flag, f'{value:g}' if float(f'{value:g}') == value else repr(value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def add_flags(p):
    """Add the run's settings to ``p`` (an argparse parser) as train.py's flags, with
    RunConfig's defaults."""
    import net
    import stn
    from stngluon.engine import LR_MODES
    from stngluon.rundir import MAX_SEED
    D = RunConfig()
    p.add_argument('--api', choices=API, default=D.api,
                   help='Gluon HybridBlocks, or sym.SpatialTransformer trained with mx.mod.Module')
    p.add_argument('--dataset', choices=distort.DATASETS, default=D.dataset,
                   help='MNIST or one of the paper\'s distorted sets (see distort.py)')
    p.add_argument('--data-seed', type=bounded_int(0, 2 ** 31 - 1), default=D.data_seed, metavar='S',
                   help='seed of the distorted train/test sets (the test set is fixed by it)')
    p.add_argument('--fresh-distortions', action='store_true',
                   help='distort the training digits anew every epoch instead of once')
    p.add_argument('--epochs', type=positive(int), default=D.epochs, metavar='N')
    p.add_argument('--batch-size', type=positive(int), default=D.batch_size, metavar='N',
                   help='images per update (the global batch across devices and workers)')
    p.add_argument('--optimizer', choices=OPTIMIZERS, default=D.optimizer,
                   help='adam, or sgd with --momentum')
    p.add_argument('--lr', type=positive(float), default=D.lr, metavar='X',
                   help='initial learning rate')
    p.add_argument('--momentum', type=float, default=D.momentum, metavar='X',
                   help='SGD momentum')
    p.add_argument('--lr-mode', choices=LR_MODES, default=D.lr_mode,
                   help='step: multiply by --lr-factor after each of --lr-steps; cosine: '
                        'decay to 0 at the last epoch')
    p.add_argument('--lr-steps', type=epoch_list, default=D.lr_steps, metavar='E1,E2',
                   help='epochs after which the learning rate is multiplied by --lr-factor')
    p.add_argument('--lr-factor', type=positive(float), default=D.lr_factor, metavar='X',
                   help='what each of --lr-steps multiplies the learning rate by')
    p.add_argument('--warmup-epochs', type=float, default=D.warmup_epochs, metavar='E',
                   help='epochs of linear warm-up from 0 to --lr before the schedule')
    p.add_argument('--loc-lr-mult', type=positive(float), default=D.loc_lr_mult, metavar='X',
                   help='learning-rate multiplier of the localisation net and regressor')
    p.add_argument('--seed', type=bounded_int(0, MAX_SEED), default=D.seed, metavar='S',
                   help='seed of the initial weights, the shuffle and dropout')
    p.add_argument('--model', choices=net.MODELS, default=D.model,
                   help='classifier: the original port\'s LeNet, or the paper\'s FCN or CNN (see net.py)')
    which = p.add_mutually_exclusive_group()
    which.add_argument('--transform', choices=('none',) + stn.TRANSFORMS, default=D.transform,
                       help='spatial transformer family in front of the classifier')
    which.add_argument('--no-stn', dest='transform', action='store_const', const='none',
                       help='no transformer: --transform none')
    p.add_argument('--transformers', type=positive(int), default=D.transformers, metavar='K',
                   help='transformers side by side, each reading the whole input and '
                        'warping all its channels, their outputs concatenated (the paper\'s '
                        '2xST for --dataset addition: 2)')
    p.add_argument('--per-channel', action='store_true',
                   help='with --transformers K on K-channel inputs (--dataset addition: 2), '
                        'transformer k passes on channel k only, warped: one transformer per '
                        'digit (each still reads every channel)')
    p.add_argument('--stn-at', type=places, default=D.stn_at, metavar='PLACES',
                   help='where transformers go, in series: input, conv1 (--model cnn: on the '
                        'feature map of its first stage, warping every channel), or both '
                        '(input,conv1)')
    p.add_argument('--iterations', type=positive(int), default=D.iterations, metavar='K',
                   help='compositional transformer: K steps, each looking at the input warped '
                        'by the parameters so far and composing an update with them; the final '
                        'parameters warp the original input once (IC-STN; affine, attention, '
                        'projective)')
    p.add_argument('--loc-per-step', action='store_true',
                   help='with --iterations K > 1, a localisation net for every step (c-STN) '
                        'instead of one shared across the steps (IC-STN)')
    p.add_argument('--tps-grid', type=positive(int), default=D.tps_grid, metavar='N',
                   help='--transform tps: N x N control points')
    p.add_argument('--width', type=positive(int), default=D.width, metavar='N',
                   help='fcn: hidden units, cnn: first-layer filters (default: fitted to the '
                        'experiment\'s parameter budget, net.BUDGETS)')
    p.add_argument('--budget-mult', type=positive(float), default=D.budget_mult, metavar='X',
                   help='fit fcn/cnn to this multiple of the experiment\'s parameter budget '
                        '(net.BUDGETS) when --width is not given')
    p.add_argument('--input-norm', choices=list(net.INPUT_NORMS), default=D.input_norm,
                   help='what the classifier does to its input: mnist: subtract MNIST\'s pixel '
                        'mean and divide by its std (0.1307, 0.3081); none: take the [0, 1] '
                        'pixels as they are')
    p.add_argument('--precision', choices=['auto', *net.PRECISIONS], default='auto',
                   help='the classifier\'s convolutions and dense layers in float32 or bfloat16 '
                        '(weights, gradients and the transformer stay float32; bfloat16 needs a '
                        'CPU with AVX-512 bf16). auto: bfloat16 for the CNN baselines (--model '
                        'cnn --no-stn) on such a CPU, where it was measured faster with test '
                        'error within float32\'s seed spread; float32 otherwise '
                        '(docs/speed.md#bfloat16)')
    p.add_argument('--train-size', type=positive(int), default=D.train_size, metavar='N',
                   help='train on the first N training images only (quick runs)')
    return p


def of_namespace(parser, args):
    """The RunConfig of parsed flags ``args`` (others in it left out); ``parser.error`` on
    a combination no run can have."""
    try:
        if args.budget_mult != 1 and args.width is not None:   # a resolved config has both
            fail('budget-mult', 'sets the width of --model fcn or cnn, so not with --width or '
                                '--model lenet')
        return RunConfig(**{k: v for k, v in vars(args).items() if k in RunConfig.names()})
    except ConfigError as e:
        parser.error(str(e))


def check(c):
    """ConfigError on a setting, or a combination, that no run can have."""
    import net
    import stn
    from stngluon.engine import LR_MODES
    from stngluon.rundir import MAX_SEED
    choices = {'api': API, 'dataset': distort.DATASETS, 'optimizer': OPTIMIZERS,
               'lr_mode': LR_MODES, 'model': net.MODELS, 'transform': ('none',) + stn.TRANSFORMS,
               'input_norm': tuple(net.INPUT_NORMS), 'precision': tuple(net.PRECISIONS)}
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            fail(name, f'{getattr(c, name)!r} is not one of {", ".join(allowed)}')
    for name in ('epochs', 'batch_size', 'lr', 'lr_factor', 'loc_lr_mult', 'tps_grid',
                 'transformers', 'budget_mult', 'width', 'train_size', 'iterations'):
        value = getattr(c, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            fail(name, f'{value} must be a finite number > 0')
    for name, high in (('seed', MAX_SEED), ('data_seed', 2 ** 31 - 1)):
        if not (isinstance(getattr(c, name), int) and 0 <= getattr(c, name) <= high):
            fail(name, f'{getattr(c, name)} must be between 0 and {high:,d}')
    if not (isinstance(c.lr_steps, list) and all(isinstance(s, int) and s >= 1 for s in c.lr_steps)
            and c.lr_steps == sorted(c.lr_steps)):
        fail('lr_steps', f'{c.lr_steps!r} must be increasing epochs >= 1')
    if not (isinstance(c.stn_at, list) and c.stn_at
            and c.stn_at == [p for p in net.PLACES if p in c.stn_at]):
        fail('stn_at', f'{c.stn_at!r}: use some of {", ".join(net.PLACES)}, each once, in order')
    if not 0 <= c.momentum < 1:
        fail('momentum', f'{c.momentum} must be in [0, 1)')
    if not 0 <= c.warmup_epochs < c.epochs:
        fail('warmup-epochs', f'{c.warmup_epochs} must be >= 0 and below --epochs')
    if c.stn_at != ['input'] and (c.model != 'cnn' or c.transform == 'none' or c.transformers > 1):
        fail('stn-at', f'{",".join(c.stn_at)} needs --model cnn, a --transform and one '
                       f'transformer per place')
    if c.transformers > 1 and (c.transform == 'none' or c.api == 'symbol'):
        fail('transformers', f'{c.transformers} transformers need --api gluon and a --transform')
    if c.per_channel and not 1 < c.transformers == c.channels:
        fail('per-channel', f'needs --transformers {c.channels} for --dataset {c.dataset}\'s '
                            f'{c.channels}-channel images (one transformer per channel)'
             if c.channels > 1 else f'--dataset {c.dataset} has one channel; one transformer '
                                    f'per channel is for --dataset addition')
    if c.iterations != 1 and (c.transform not in stn.COMPOSABLE or c.api == 'symbol'
                              or not isinstance(c.iterations, int)):
        fail('iterations', f'{c.iterations} steps need --api gluon and a --transform that '
                           f'composes ({", ".join(stn.COMPOSABLE)}; {stn.NOT_COMPOSABLE}), '
                           f'not {c.transform}')
    if c.loc_per_step and c.iterations == 1:
        fail('loc-per-step', 'a localisation net per step needs --iterations K > 1')
    if c.tps_grid < 2:
        fail('tps-grid', f'{c.tps_grid} must be >= 2')
    if c.width is not None and c.model == 'lenet':
        fail('width', 'only for --model fcn or cnn (LeNet\'s sizes are fixed)')
    if c.budget_mult != 1 and c.model == 'lenet':
        fail('budget-mult', 'sets the width of --model fcn or cnn, so not with --width or '
                            '--model lenet')
    if c.api == 'symbol' and c.precision != 'float32':
        fail('precision', f'--api symbol trains in float32, not {c.precision}; use --api gluon')
    if c.api == 'symbol' and c.input_norm != 'mnist':
        fail('input-norm', f'--api symbol standardises with MNIST\'s mean and std, not '
                           f'{c.input_norm}; use --api gluon')
    if c.api == 'symbol' and (c.model != 'lenet' or c.transform not in ('affine', 'none')):
        fail('api', f'symbol builds only --model lenet with --transform affine or none, not '
                    f'--model {c.model} --transform {c.transform}; use --api gluon')


def fail(flag, message):
    raise ConfigError(f'argument --{flag.replace("_", "-")}: {message}')


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a {kind.__name__}')
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f'{text!r} must be a finite number > 0')
        return value
    return parse


def epoch_list(text):
    try:
        steps = [int(s) for s in text.split(',') if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a comma-separated list of epochs')
    if any(s < 1 for s in steps) or steps != sorted(steps):
        raise argparse.ArgumentTypeError(f'{text!r}: epochs must be >= 1 and increasing')
    return steps


def bounded_int(low, high):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not an int')
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f'{text!r} must be between {low} and {high:,d}')
        return value
    return parse


def places(text):
    """--stn-at: a comma-separated list of net.PLACES, each once, in their order."""
    parts = text.split(',')
    import net
    if not parts or any(p not in net.PLACES for p in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f'{text!r}: use some of {", ".join(net.PLACES)}, '
                                         f'comma-separated, each once')
    return [p for p in net.PLACES if p in parts]
