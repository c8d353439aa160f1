"""Train a spatial transformer network on MNIST or the paper's distorted MNIST sets.

    python train.py                      # 20 epochs, writes result/
    python train.py --no-stn --out result/lenet
    python train.py --resume             # continue the run in --out
    python train.py --dataset rts --model cnn --transform tps --out result/rts-st-cnn-tps
    python train.py --dataset rts --model cnn --transform tps --summary   # layers, no training
    python train.py --lr-mode cosine --warmup-epochs 1

--model lenet|fcn|cnn picks the classifier (the seed LeNet, the paper's FCN or CNN) and
--transform none|affine|attention|projective|tps the transformer in front (--no-stn is
--transform none). fcn and cnn get the width that brings the model to its experiment's
parameter budget (net.fit_width, net.BUDGETS) unless --width is given, and on RTS and TC
average-pool the transformer's output 2x2 before the classifier (see net.py). The
learning rate follows one schedule (engine.Schedule: step or cosine, with an optional
linear warm-up) in both APIs.

Everything a run makes goes into --out (rundir.py owns the layout): config.json,
metrics.csv (one row per epoch), checkpoint-NNNN.{params,states} with checkpoint.json
pointing at the newest, the exported network (model-symbol.json + model-NNNN.params)
and, with a transformer of any family, compare.jpg (input digits with the regions the
transformer samples outlined, beside its output) and snapshots.npz (its output and
those outlines on 16 test digits after every epoch, for visualize.py --animate).
"""
import argparse
import contextlib
import copy
import io
import math
import os
import sys
import time
import traceback

import compat  # noqa: F401  (before mxnet)
import mxnet as mx
import numpy as np

import distort
import geometry
import mnist
import net
import rundir
import runtime
import sampler
import stn
from engine import LR_MODES, Diverged, GluonModel, Watchdog, build_net, pool_after_stn
from net import MODELS
from symbolic import ModuleModel

# The flags that make a run what it is: --resume takes them from its config.json. Of
# them, only CHANGEABLE may be given anew on the command line when resuming.
RUN_FLAGS = ['api', 'dataset', 'data_seed', 'fresh_distortions', 'epochs', 'batch_size', 'lr',
             'lr_steps', 'lr_factor', 'lr_mode', 'warmup_epochs', 'optimizer', 'momentum',
             'loc_lr_mult', 'seed', 'train_size', 'model', 'transform', 'tps_grid', 'width',
             'transformers', 'stn_at', 'input_norm', 'per_channel']
CHANGEABLE = ['epochs', 'lr']   # extend a run; a smaller rate after a divergence
# configs written before these flags used their defaults
ADDED_LATER = ['lr_mode', 'warmup_epochs', 'transformers', 'stn_at', 'input_norm', 'per_channel']
TRANSFORMS = ('none',) + stn.TRANSFORMS


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


def context(text):
    """--ctx: cpu, a GPU id, or a comma-separated list of them (0,1; cpu,cpu)."""
    parts = text.split(',')
    for part in parts:
        if part == 'cpu':
            continue
        if not part.isdigit():
            raise argparse.ArgumentTypeError(f'{text!r}: use cpu, a GPU id such as 0, or a '
                                             f'comma-separated list of them such as 0,1')
        if int(part) >= mx.context.num_gpus():
            raise argparse.ArgumentTypeError(
                f'GPU {part} requested but this MXNet sees {mx.context.num_gpus()} GPU(s) '
                f'(the PyPI mxnet wheel is CPU-only; install mxnet-cuXXX for GPUs)')
    gpus = [p for p in parts if p != 'cpu']
    if len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f'{text!r}: a GPU appears twice')
    return text


def contexts(text):
    """The mx contexts of a --ctx value; the k-th 'cpu' is mx.cpu(k), so that cpu,cpu is two
    devices (data-parallel on one CPU, for testing the multi-device path)."""
    return [mx.cpu(k) if part == 'cpu' else mx.gpu(int(part))
            for k, part in enumerate(text.split(','))]


def places(text):
    """--stn-at: a comma-separated list of net.PLACES, each once, in their order."""
    parts = text.split(',')
    if not parts or any(p not in net.PLACES for p in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f'{text!r}: use some of {", ".join(net.PLACES)}, '
                                         f'comma-separated, each once')
    return [p for p in net.PLACES if p in parts]


def parse_args(argv=None):
    """The checked flags of ``argv``; exits with a usage message on a bad value."""
    p = parser()
    args = p.parse_args(argv)
    if not 0 <= args.momentum < 1:
        p.error(f'argument --momentum: {args.momentum} must be in [0, 1)')
    if not 0 <= args.warmup_epochs < args.epochs:
        p.error(f'argument --warmup-epochs: {args.warmup_epochs} must be >= 0 and below --epochs')
    if args.stn_at != ['input'] and (args.model != 'cnn' or args.transform == 'none'
                                     or args.transformers > 1):
        p.error(f'argument --stn-at: {",".join(args.stn_at)} needs --model cnn, a --transform '
                f'and one transformer per place')
    if args.transformers > 1 and (args.transform == 'none' or args.api == 'symbol'):
        p.error(f'argument --transformers: {args.transformers} transformers need --api gluon '
                f'and a --transform')
    channels = distort.image_shape(args.dataset)[0]
    if args.per_channel and not 1 < args.transformers == channels:
        p.error(f'argument --per-channel: needs --transformers {channels} for --dataset '
                f'{args.dataset}\'s {channels}-channel images (one transformer per channel)'
                if channels > 1 else f'argument --per-channel: --dataset {args.dataset} has '
                f'one channel; one transformer per channel is for --dataset addition')
    if args.tps_grid < 2:
        p.error(f'argument --tps-grid: {args.tps_grid} must be >= 2')
    if args.width is not None and args.model == 'lenet':
        p.error('argument --width: only for --model fcn or cnn (LeNet\'s sizes are fixed)')
    if args.budget_mult != 1 and (args.width is not None or args.model == 'lenet'):
        p.error('argument --budget-mult: sets the width of --model fcn or cnn, so not with '
                '--width or --model lenet')
    if args.api == 'symbol' and args.kvstore.startswith('dist'):
        p.error(f'argument --kvstore: --api symbol trains in one process, not with {args.kvstore}; '
                f'use --api gluon')
    if args.api == 'symbol' and ',' in args.ctx:
        p.error(f'argument --ctx: --api symbol trains on one device, not {args.ctx}; use --api gluon')
    if args.api == 'symbol' and args.input_norm != 'mnist':
        p.error(f'argument --input-norm: --api symbol standardises with MNIST\'s mean and std, '
                f'not {args.input_norm}; use --api gluon')
    if args.api == 'symbol' and (args.model != 'lenet' or args.transform not in ('affine', 'none')):
        p.error(f'argument --api: symbol builds only --model lenet with --transform affine or '
                f'none, not --model {args.model} --transform {args.transform}; use --api gluon')
    return args


def given(argv):
    """The names (dests) of the flags that ``argv`` sets itself, defaults left out."""
    p = parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def as_argv(settings):
    """Command-line flags that set ``settings`` (a dict of RUN_FLAGS values)."""
    argv = []
    for key, value in settings.items():
        flag = '--' + key.replace('_', '-')
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, list):
            argv += [flag, ','.join(map(str, value))]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def resume_args(args, argv):
    """``args`` for continuing the run in ``args.out``: its settings from config.json,
    checked like the command line's, with --epochs and --lr (CHANGEABLE) taken from the
    command line where given there; another run flag given there must match the run's.
    Returns (args, the epoch of its checkpoint); RunError if it cannot be continued."""
    start = rundir.checkpoint_epoch(args.out)
    config = os.path.join(args.out, 'config.json')
    if start is None:
        raise rundir.RunError(f'--resume: no checkpoint.json in {args.out}; start a new run '
                              f'without --resume')
    saved = rundir.read_config(args.out)
    missing = [k for k in RUN_FLAGS if k not in saved and k not in ADDED_LATER]
    if missing:
        raise rundir.RunError(f'{config} is missing or lacks {missing}: restore it, or start '
                              f'the run anew in another --out')
    settings = {k: saved[k] for k in RUN_FLAGS if k in saved}
    explicit = given(argv)
    clash = [f'--{k.replace("_", "-")} {getattr(args, k)} (the run has {settings.get(k)})'
             for k in RUN_FLAGS if k in explicit and k not in CHANGEABLE
             and getattr(args, k) != settings.get(k)]
    if clash:
        raise rundir.RunError(f'--resume keeps the run\'s settings but for --epochs and --lr: '
                              f'{"; ".join(clash)}. Leave those flags out, or start a new run in '
                              f'another --out')
    settings.update({k: getattr(args, k) for k in CHANGEABLE if k in explicit})
    args.onnx = args.onnx or saved.get('onnx') is True   # an output the run asked for
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            checked = parse_args(as_argv(settings))
    except SystemExit:
        raise rundir.RunError(f'{config} holds a setting the command line would reject: '
                              f'{errors.getvalue().strip().splitlines()[-1]}') from None
    if checked.epochs < start:
        raise rundir.RunError(f'{args.out} has trained {start} epochs already; --epochs '
                              f'{checked.epochs} would not continue it: pass --epochs N > {start} '
                              f'to extend it')
    for key in RUN_FLAGS:
        setattr(args, key, getattr(checked, key))
    return args, start


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--api', choices=['gluon', 'symbol'], default='gluon',
                   help='Gluon HybridBlocks, or sym.SpatialTransformer trained with mx.mod.Module')
    p.add_argument('--dataset', choices=distort.DATASETS, default='mnist',
                   help='MNIST or one of the paper\'s distorted sets (see distort.py)')
    p.add_argument('--data-seed', type=bounded_int(0, 2 ** 31 - 1), default=0,
                   help='seed of the distorted train/test sets (the test set is fixed by it)')
    p.add_argument('--fresh-distortions', action='store_true',
                   help='distort the training digits anew every epoch instead of once')
    p.add_argument('--epochs', type=positive(int), default=20)
    p.add_argument('--batch-size', type=positive(int), default=64)
    p.add_argument('--optimizer', choices=['adam', 'sgd'], default='adam')
    p.add_argument('--lr', type=positive(float), default=0.001, help='initial learning rate')
    p.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    p.add_argument('--lr-mode', choices=LR_MODES, default='step',
                   help='step: multiply by --lr-factor after each of --lr-steps; cosine: '
                        'decay to 0 at the last epoch')
    p.add_argument('--lr-steps', type=epoch_list, default=[12, 16],
                   help='epochs after which the learning rate is multiplied by --lr-factor')
    p.add_argument('--lr-factor', type=positive(float), default=0.1)
    p.add_argument('--warmup-epochs', type=float, default=0,
                   help='epochs of linear warm-up from 0 to --lr before the schedule')
    p.add_argument('--loc-lr-mult', type=positive(float), default=0.1,
                   help='learning-rate multiplier of the localisation net and regressor')
    p.add_argument('--seed', type=bounded_int(0, rundir.MAX_SEED), default=1)
    p.add_argument('--model', choices=MODELS, default='lenet',
                   help='classifier: the seed LeNet, or the paper\'s FCN or CNN (see net.py)')
    which = p.add_mutually_exclusive_group()
    which.add_argument('--transform', choices=TRANSFORMS, default='affine',
                       help='spatial transformer family in front of the classifier')
    which.add_argument('--no-stn', dest='transform', action='store_const', const='none',
                       help='no transformer: --transform none')
    p.add_argument('--transformers', type=positive(int), default=1,
                   help='transformers side by side, each reading the whole input and '
                        'warping all its channels, their outputs concatenated (the paper\'s '
                        '2xST for --dataset addition: 2)')
    p.add_argument('--per-channel', action='store_true',
                   help='with --transformers K on K-channel inputs (--dataset addition: 2), '
                        'transformer k passes on channel k only, warped: one transformer per '
                        'digit (each still reads every channel)')
    p.add_argument('--stn-at', type=places, default=['input'],
                   help='where transformers go, in series: input, conv1 (--model cnn: on the '
                        'feature map of its first stage, warping every channel), or both '
                        '(input,conv1)')
    p.add_argument('--tps-grid', type=positive(int), default=4,
                   help='--transform tps: N x N control points')
    p.add_argument('--width', type=positive(int), default=None,
                   help='fcn: hidden units, cnn: first-layer filters (default: fitted to the '
                        'experiment\'s parameter budget, net.BUDGETS)')
    p.add_argument('--budget-mult', type=positive(float), default=1.0,
                   help='fit fcn/cnn to this multiple of the experiment\'s parameter budget '
                        '(net.BUDGETS) when --width is not given')
    p.add_argument('--input-norm', choices=list(net.INPUT_NORMS), default='mnist',
                   help='what the classifier does to its input: mnist: subtract MNIST\'s pixel '
                        'mean and divide by its std (0.1307, 0.3081); none: take the [0, 1] '
                        'pixels as they are')
    p.add_argument('--summary', action='store_true',
                   help='print the layers and parameter counts of the model and exit')
    p.add_argument('--train-size', type=positive(int), default=None,
                   help='train on the first N training images only (quick runs)')
    p.add_argument('--data-dir', default=None,
                   help='folder with the MNIST files (default: $MNIST_DIR, else data/mnist)')
    p.add_argument('--out', default='result', help='folder for everything the run writes')
    p.add_argument('--ctx', type=context, default='cpu',
                   help='cpu, a GPU id, or several (0,1,2,3): each batch is split across them')
    p.add_argument('--kvstore', choices=['device', 'local', 'dist_sync', 'dist_device_sync'],
                   default='device',
                   help='where gradients are summed (gluon.Trainer\'s kvstore): device or local '
                        'across --ctx; dist_sync or dist_device_sync across worker processes '
                        'started with DMLC_ROLE=worker (see README)')
    p.add_argument('--dist-timeout', type=positive(float), default=300,
                   help='dist kvstores: seconds without progress (another process dead or '
                        'unreachable) after which a worker stops with a message')
    p.add_argument('--onnx', action='store_true',
                   help='also write the exported network as ONNX, RUN_DIR/model.onnx '
                        '(export_onnx.py)')
    p.add_argument('--resume', action='store_true',
                   help='continue the run in --out from its checkpoint, with its own settings '
                        '(--epochs N extends it, --lr sets a new rate; see README)')
    return p


def budget(args, image_shape):
    """The parameter budget fcn/cnn are fitted to: the experiment's (net.BUDGETS, per input
    channel) times --budget-mult."""
    return net.parameter_budget(image_shape, args.budget_mult)


def resolve_width(args, image_shape):
    """Set an unset ``args.width`` of fcn/cnn to the one that meets the parameter budget."""
    if args.width is None and args.model != 'lenet':
        args.width = net.fit_width(args.model, args.transform, image_shape,
                                   budget=budget(args, image_shape),
                                   pool_after_stn=pool_after_stn(args), tps_grid=args.tps_grid,
                                   num_classes=distort.num_classes(args.dataset),
                                   transformers=args.transformers, places=args.stn_at,
                                   per_channel=args.per_channel)


def describe(args):
    """The run's network by name (``net.display_name``): 'STN (affine) + LeNet', 'FCN', ..."""
    return net.display_name(args.model, args.transform, args.transformers, args.stn_at,
                            args.per_channel)


def summary(args):
    """Print the layers of the run's network with their parameter counts (``Block.summary``)."""
    image_shape = distort.image_shape(args.dataset)
    resolve_width(args, image_shape)
    model = build_net(args)
    model.initialize(mx.init.Xavier(magnitude=2.24))
    x = mx.nd.zeros((1, *image_shape))
    model(x)
    shown = image_shape[1:] if image_shape[0] == 1 else image_shape
    print(f'{describe(args)} on {args.dataset} ({"x".join(map(str, shown))} inputs)'
          + (f', width {args.width}' if args.width else '')
          + (', 2x2 average pooling after the transformer' if pool_after_stn(args) else ''))
    model.summary(x)
    for name, part in [('transformer (localisation + regressor)', model.stn),
                       ('transformer on the conv1 feature map', model.feature_stn),
                       ('classifier', model.classifier)]:
        if part is not None:
            print(f'{name:40s} {net.trainable_params(part):>9,d}')
    limit = budget(args, image_shape) if args.model != 'lenet' else None
    print(f'{"total trainable":40s} {net.trainable_params(model):>9,d}'
          + (f'   (budget {limit:,d})' if limit else ''))


def snapshot(model, images, out, epoch, warned=None):
    """The transformer's output on a fixed batch and the outlines of the regions it
    samples, kept per epoch for stn_training.gif (runs with a transformer); warns of a
    transformer that has left the input (``lost_transformers``)."""
    if model.args.transform != 'none':
        outputs, grids = model.regions(images)
        rundir.record_snapshot(out, epoch, images, outputs, grids)
        for message in lost_transformers(grids, epoch, set() if warned is None else warned):
            print(message, file=sys.stderr, flush=True)


def lost_transformers(grids, epoch, warned):
    """Warnings for the transformers whose sampling grids (N, 2K, H', W') have left the input
    (under 1% of their points on it over the pictured images): their output is zeros, so
    no gradient reaches their localisation net and they do not come back. Each transformer
    is warned of once; ``warned`` holds those already warned of."""
    messages = []
    for k, share in enumerate(geometry.share_on_input(grids)):
        if share < 0.01 and k not in warned:
            warned.add(k)
            messages.append(
                f'warning: after epoch {epoch}, transformer {k + 1} samples off the input '
                f'({100 * share:.1f}% of its points on it): its output is zeros, its '
                f'localisation net gets no gradient and it will not come back. Try a '
                f'smaller --loc-lr-mult (the default is 0.1) in a new run')
    return messages


def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        return summary(args)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        sys.exit(f'error: --out {args.out} is a file, not a folder: pass a folder for the run')
    if not args.kvstore.startswith('dist'):
        if argv is None:   # a command, not a call: the engine and wait policy for this host
            try:
                execution_settings(args, argv)
            except KeyboardInterrupt:
                sys.exit('\ninterrupted while timing the execution settings; nothing was kept '
                         'or trained: start the run again')
        return run(args, argv)
    # One worker of several (README, "Scaling out"): each waits in the kvstore for all the
    # others, so a watchdog stops it if they stop answering, and a worker that stops early
    # leaves with os._exit: MXNet's own shutdown would wait for the others forever.
    watchdog = Watchdog(args.dist_timeout, lambda what: stalled(args, what))
    try:
        with watchdog.armed('waiting for the scheduler, the servers and the other workers to start'):
            kvstore = mx.kv.create(args.kvstore)
        run(args, argv, kvstore, watchdog)
        with watchdog.armed('waiting for the other workers to finish'):
            kvstore._barrier()
    except BaseException as e:
        if not isinstance(e, SystemExit):
            traceback.print_exc()
        elif e.code not in (None, 0):
            print(e.code if isinstance(e.code, str) else f'exit {e.code}', file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if not isinstance(e, SystemExit) or e.code else 0)


def execution_settings(args, argv):
    """``runtime.settle`` for the run's network (its own settings when resuming): may run
    this script again in place, with the settings measured fastest here."""
    if args.api != 'gluon':
        return
    if args.resume:
        try:
            args, _ = resume_args(copy.copy(args), argv)
        except (rundir.RunError, OSError):
            return   # run() reports it
    runtime.settle(*network(args))


def network(args):
    """(name, flags) of the run's network for runtime.py: the name its execution settings
    are cached under ('ST-CNN (affine) on rts, batch 64') and the flags that train it."""
    flags = as_argv({k: getattr(args, k) for k in RUN_FLAGS})
    return f'{describe(args)} on {args.dataset}, batch {args.batch_size}', flags


def execution():
    """The settings MXNet runs this process with (runtime.py), for config.json and the header."""
    return {'engine': os.environ.get(runtime.ENGINE, runtime.DEFAULT[runtime.ENGINE]),
            'omp_wait_policy': os.environ.get(runtime.WAIT), 'omp_threads': compat.THREADS,
            'sampler': sampler.name()}


def kept_epoch(out):
    """The epoch of the last complete checkpoint in ``out``, or None (also when its pointer
    cannot be read: for messages about a run that already failed)."""
    try:
        return rundir.checkpoint_epoch(out)
    except (rundir.RunError, OSError):
        return None


def stalled(args, what):
    """The watchdog's message when a distributed run stops making progress."""
    done = kept_epoch(args.out)
    return (f'error: no progress for {args.dist_timeout:g} s (--dist-timeout) while {what}: a '
            f'worker, a server or the scheduler of this {args.kvstore} run has stopped or cannot '
            f'be reached, so this worker stops too. ' + (
                f'The last complete checkpoint (epoch {done}) is kept in {args.out}: start the '
                f'scheduler, the servers and the workers again, the workers with --resume'
                if done is not None else f'No checkpoint was written in {args.out}: start the '
                f'run again'))


def run(args, argv, kvstore='device', watchdog=None):
    """``train`` in ``args.out``, held by ``rundir.lock`` (by rank 0 alone in a distributed
    run: the other workers write nothing); a RunError or OSError ends it with one line."""
    try:
        if getattr(kvstore, 'rank', 0) != 0:
            return train(args, argv, kvstore, watchdog)
        os.makedirs(args.out, exist_ok=True)
        with rundir.lock(args.out):
            rundir.clean(args.out)   # what an interrupted run may have left
            train(args, argv, kvstore, watchdog)
    except rundir.RunError as e:
        sys.exit(f'error: {e}')
    except KeyboardInterrupt:   # before the first epoch (train's loop answers its own)
        done = kept_epoch(args.out)
        sys.exit('\ninterrupted before training began; ' + (
            f'the checkpoint of epoch {done} is in {args.out}: continue with python train.py '
            f'--out {args.out} --resume' if done is not None else 'nothing was trained: start '
            'the run again'))
    except OSError as e:   # a bad --out, a full disk, a read-only folder
        done = kept_epoch(args.out)
        sys.exit(f'error: {e.filename or args.out}: {e.strerror or e}. Nothing half-written was '
                 f'left in {args.out}' + (
                     f'; its last complete checkpoint (epoch {done}) is kept: fix the cause and '
                     f'continue with python train.py --out {args.out} --resume' if done is not None
                     else '; fix the cause and start the run again'))


def train(args, argv, kvstore='device', watchdog=None):
    """The run of ``args`` in ``args.out`` (held by ``rundir.lock``). ``kvstore``: a dist
    KVStore when this process is one worker of several; only rank 0 writes the run folder
    and evaluates, every worker trains its share of each global batch, with ``watchdog``
    (an engine.Watchdog) armed while it does."""
    writer = getattr(kvstore, 'rank', 0) == 0
    start_epoch = 0
    if args.resume:
        args, start_epoch = resume_args(args, argv)
        print(f'resuming {args.out} after epoch {start_epoch} of {args.epochs}')

    ctx = contexts(args.ctx)
    try:
        data = distort.load_dataset(args.dataset, args.data_dir, args.data_seed)
    except mnist.MNISTError as e:
        raise rundir.RunError(e) from None
    train_x, train_y, test_x, test_y = data.train_x, data.train_y, data.test_x, data.test_y
    if args.train_size:
        train_x, train_y = train_x[:args.train_size], train_y[:args.train_size]
    if args.api == 'symbol' and args.batch_size > len(train_x):
        raise rundir.RunError(f'--batch-size {args.batch_size} is larger than the {len(train_x)} '
                              f'training images: --api symbol trains on whole batches only (its '
                              f'NDArrayIter drops the last partial one). Pass a smaller --batch-size')

    resolve_width(args, train_x.shape[1:])
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    model = (GluonModel(args, train_x.shape, ctx, start_epoch, kvstore) if args.api == 'gluon'
             else ModuleModel(args, train_x.shape, ctx[0], start_epoch))
    armed = watchdog.armed if watchdog else lambda what: contextlib.nullcontext()
    if watchdog:
        model.beat = watchdog.beat
    warned = set()   # the transformers already reported lost (lost_transformers)
    if args.resume:
        stem = rundir.checkpoint_stem(args.out, start_epoch)
        for path in (stem + '.params', stem + '.states'):
            if not os.path.isfile(path):
                raise rundir.RunError(f'{path} not found, though checkpoint.json names it: restore '
                                      f'it, or start the run anew in another --out')
        try:
            model.load(stem)
        except Exception as e:   # MXNet, pickle and numpy each have their own errors here
            raise rundir.RunError(f'{stem}.params / .states cannot be loaded ({rundir.reason(e)}): '
                                  f'the checkpoint is damaged; restore it, or start the run anew '
                                  f'in another --out') from None
        rows = rundir.read_metrics(args.out, start_epoch)
        if writer:
            rundir.write_config(args.out, dict(rundir.read_config(args.out), epochs=args.epochs,
                                               lr=args.lr, onnx=args.onnx))   # what --resume
                                                                               # may change
    elif writer:
        rows = []
        rundir.write_config(args.out, dict(
            vars(args), num_params=model.num_params, train_images=len(train_x),
            pool_after_stn=pool_after_stn(args), image_shape=train_x.shape[1:],
            mxnet=mx.__version__, omp_threads=compat.THREADS, execution=execution(),
            distortion=dict(distort.check_params(args.dataset, {}), version=distort.VERSION)))
        rundir.save_epoch(args.out, 0, rows, model.save_params, model.save_states)  # for Ctrl-C
        snapshot(model, test_x[:16], args.out, 0, warned)

    workers = getattr(kvstore, 'num_workers', 1)
    print(f'{describe(args)} ({args.api} API), '
          f'{model.num_params} parameters, '
          f'{args.dataset}: {len(train_x)} training / {len(test_x)} test images '
          f'of {train_x.shape[2]}x{train_x.shape[3]}, ctx {",".join(map(str, ctx))}'
          + (f', worker {kvstore.rank} of {workers}' if workers > 1 else '')
          + ', {engine}, OpenMP {omp_threads} threads {omp_wait_policy}, {sampler}'.format(
              **execution()))
    if writer:
        print('epoch  train_loss  test_loss  test_acc      lr  imgs/s  epoch_s')
    epoch, resume = start_epoch, f'python train.py --out {args.out} --resume'
    try:
        for epoch in range(start_epoch + 1, args.epochs + 1):
            start = time.time()
            if args.fresh_distortions:
                train_x = distort.fresh_training_set(args.dataset, data.digits[:args.train_size],
                                                     args.data_seed, epoch)
            with armed(f'training epoch {epoch}'):
                train_loss, imgs_per_s = model.fit_epoch(epoch, train_x, train_y)
            if not writer:
                continue
            with armed(f'evaluating epoch {epoch} (its last update)'):
                test_loss, test_acc = model.evaluate(test_x, test_y)
            lr = model.learning_rate
            rows.append(dict(dataset=args.dataset, epoch=epoch, train_loss=f'{train_loss:.5f}',
                             test_loss=f'{test_loss:.5f}', test_acc=f'{test_acc:.4f}', lr=f'{lr:g}',
                             imgs_per_s=f'{imgs_per_s:.0f}', epoch_s=f'{time.time() - start:.1f}'))
            print(f'{epoch:5d}  {train_loss:10.4f}  {test_loss:9.4f}  {100 * test_acc:7.2f}%  '
                  f'{lr:6g}  {imgs_per_s:6.0f}  {time.time() - start:7.1f}', flush=True)
            rundir.save_epoch(args.out, epoch, rows, model.save_params, model.save_states)
            snapshot(model, test_x[:16], args.out, epoch, warned)
        if workers > 1:   # every worker applied the same updates: the same weights
            print(f'worker {kvstore.rank} of {workers} ends with weights {model.fingerprint()}',
                  flush=True)
        if not writer:
            return
        prefix = rundir.export(args.out, args.epochs, model.export)
        print(f'exported {prefix}-symbol.json and {prefix}-{args.epochs:04d}.params')
        if args.onnx or os.path.exists(os.path.join(args.out, rundir.ONNX)):   # never stale
            import export_onnx   # onnx, only when asked for
            try:
                print(f'wrote {export_onnx.export(args.out)}')
            except export_onnx.ConversionError as e:
                raise rundir.RunError(e) from None
        if args.transform != 'none':
            import visualize   # matplotlib, only for the picture at the end
            print(f'wrote {visualize.compare_run(args.out, test_x[:64], test_y[:64])}')
    except KeyboardInterrupt:
        done = rundir.checkpoint_epoch(args.out)
        what = 'while exporting' if done == args.epochs else f'in epoch {epoch}'
        sys.exit(f'\ninterrupted {what}; the checkpoint of epoch {done} is in {args.out}: '
                 f'continue with {resume}')
    except Diverged as e:
        sys.exit(f'error: {e}. Stopped; the last good checkpoint (epoch '
                 f'{rundir.checkpoint_epoch(args.out)}) is kept in {args.out}: continue with a '
                 f'smaller rate, {resume} --lr {args.lr / 10:g}, or lower --loc-lr-mult in a new run')


if __name__ == '__main__':
    main()
