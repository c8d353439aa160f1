"""Train a spatial transformer network on MNIST or the paper's distorted MNIST sets.

    python train.py                      # 20 epochs, writes result/
    python train.py --no-stn --out result/lenet
    python train.py --resume             # continue the run in --out
    python train.py --dataset rts --model cnn --transform tps --out result/rts-st-cnn-tps
    python train.py --dataset rts --model cnn --transform tps --summary   # layers, no training
    python train.py --lr-mode cosine --warmup-epochs 1

--model lenet|fcn|cnn picks the classifier (the original port's LeNet, the paper's FCN or CNN) and
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
import dataclasses
import os
import sys
import time
import traceback

from stngluon import runtime
runtime.configure()   # OpenMP threads and wait policy, before MXNet loads
from stngluon import compat  # noqa: E402,F401  (the numpy shim, before mxnet)
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import net  # noqa: E402
from stngluon import distort, geometry, mnist, rundir, sampler  # noqa: E402
from stngluon.config import (CHANGEABLE, ConfigError, RunConfig, add_flags, of_namespace,  # noqa: E402
                             positive)
from stngluon.engine import Diverged, GluonModel, Watchdog  # noqa: E402
from stngluon.symbolic import ModuleModel  # noqa: E402


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


def parse_args(argv=None):
    """(RunConfig, options) of ``argv``: the run's settings, and where and how it runs
    (--out, --ctx, --kvstore, --resume, ...); exits with a usage message on a bad value."""
    p = parser()
    args = p.parse_args(argv)
    config = of_namespace(p, args)
    opts = argparse.Namespace(**{k: v for k, v in vars(args).items()
                                 if k not in RunConfig.names()})
    if config.api == 'symbol' and opts.kvstore.startswith('dist'):
        p.error(f'argument --kvstore: --api symbol trains in one process, not with {opts.kvstore}; '
                f'use --api gluon')
    if config.api == 'symbol' and ',' in opts.ctx:
        p.error(f'argument --ctx: --api symbol trains on one device, not {opts.ctx}; use --api gluon')
    return config, opts


def given(argv):
    """The names (dests) of the flags that ``argv`` sets itself, defaults left out."""
    p = parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def resumed(config, opts, argv):
    """The config of the run in ``opts.out`` to continue: its settings from config.json,
    with --epochs and --lr (CHANGEABLE) taken from the command line (``config``) where
    given there; another run flag given there must match the run's. Returns (config, the
    epoch of its checkpoint); RunError if it cannot be continued."""
    start = rundir.checkpoint_epoch(opts.out)
    path = os.path.join(opts.out, 'config.json')
    if start is None:
        raise rundir.RunError(f'--resume: no checkpoint.json in {opts.out}; start a new run '
                              f'without --resume')
    saved = rundir.read_config(opts.out)
    try:
        run = RunConfig.from_saved(saved, path)
    except ConfigError as e:
        raise rundir.RunError(f'{e}: restore it, or start the run anew in another --out') from None
    explicit = given(argv)
    clash = [f'--{k.replace("_", "-")} {getattr(config, k)} (the run has {getattr(run, k)})'
             for k in RunConfig.names() if k in explicit and k not in CHANGEABLE
             and getattr(config, k) != getattr(run, k)]
    if clash:
        raise rundir.RunError(f'--resume keeps the run\'s settings but for --epochs and --lr: '
                              f'{"; ".join(clash)}. Leave those flags out, or start a new run in '
                              f'another --out')
    try:
        run = dataclasses.replace(run, **{k: getattr(config, k) for k in CHANGEABLE if k in explicit})
    except ConfigError as e:
        raise rundir.RunError(f'{e} (the run in {opts.out})') from None
    opts.onnx = opts.onnx or saved.get('onnx') is True   # an output the run asked for
    if run.epochs < start:
        raise rundir.RunError(f'{opts.out} has trained {start} epochs already; --epochs '
                              f'{run.epochs} would not continue it: pass --epochs N > {start} '
                              f'to extend it')
    return run, start


def parser():
    """train.py's flags: the run's settings (config.add_flags), then where and how it runs."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(p)
    p.add_argument('--summary', action='store_true',
                   help='print the layers and parameter counts of the model and exit')
    p.add_argument('--data-dir', default=None, metavar='DIR',
                   help='folder with the MNIST files (default: $MNIST_DIR, else data/mnist)')
    p.add_argument('--out', default='result', metavar='DIR', help='folder for everything the run writes')
    p.add_argument('--ctx', type=context, default='cpu',
                   help='cpu, a GPU id, or several (0,1,2,3): each batch is split across them')
    p.add_argument('--kvstore', choices=['device', 'local', 'dist_sync', 'dist_device_sync'],
                   default='device',
                   help='where gradients are summed (gluon.Trainer\'s kvstore): device or local '
                        'across --ctx; dist_sync or dist_device_sync across worker processes '
                        'started with DMLC_ROLE=worker (see docs/scaling-out.md)')
    p.add_argument('--dist-timeout', type=positive(float), default=300, metavar='SECONDS',
                   help='dist kvstores: seconds without progress (another process dead or '
                        'unreachable) after which a worker stops with a message')
    p.add_argument('--onnx', action='store_true',
                   help='also write the exported network as ONNX, RUN_DIR/model.onnx '
                        '(export_onnx.py)')
    p.add_argument('--resume', action='store_true',
                   help='continue the run in --out from its checkpoint, with its own settings '
                        '(--epochs N extends it, --lr sets a new rate; see README)')
    return p


def summary(config):
    """Print the layers of the run's network with their parameter counts (``Block.summary``)."""
    config = config.resolved()
    model = net.build(config)
    model.initialize(mx.init.Xavier(magnitude=2.24))
    x = mx.nd.zeros((1, *config.image_shape))
    model(x)
    shape = config.image_shape
    shown = shape[1:] if shape[0] == 1 else shape
    print(f'{config.display_name} on {config.dataset} ({"x".join(map(str, shown))} inputs)'
          + (f', width {config.width}' if config.width else '')
          + (', 2x2 average pooling after the transformer' if config.pool_after_stn else ''))
    model.summary(x)
    for name, part in [('transformer (localisation + regressor)', model.stn),
                       ('transformer on the conv1 feature map', model.feature_stn),
                       ('classifier', model.classifier)]:
        if part is not None:
            print(f'{name:40s} {net.trainable_params(part):>9,d}')
    limit = config.budget if config.model != 'lenet' else None
    print(f'{"total trainable":40s} {net.trainable_params(model):>9,d}'
          + (f'   (budget {limit:,d})' if limit else ''))


def snapshot(model, images, out, epoch, warned=None):
    """The transformer's output on a fixed batch and the outlines of the regions it
    samples, kept per epoch for stn_training.gif (runs with a transformer); warns of a
    transformer that has left the input (``lost_transformers``)."""
    if model.config.transform != 'none':
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
    config, opts = parse_args(argv)
    if opts.summary:
        return summary(config)
    if os.path.exists(opts.out) and not os.path.isdir(opts.out):
        sys.exit(f'error: --out {opts.out} is a file, not a folder: pass a folder for the run')
    if not opts.kvstore.startswith('dist'):
        if argv is None:   # a command, not a call: the engine and wait policy for this host
            try:
                execution_settings(config, opts, argv)
            except KeyboardInterrupt:
                sys.exit('\ninterrupted while timing the execution settings; nothing was kept '
                         'or trained: start the run again')
        return run(config, opts, argv)
    # One worker of several (docs/scaling-out.md): each waits in the kvstore for all the
    # others, so a watchdog stops it if they stop answering, and a worker that stops early
    # leaves with os._exit: MXNet's own shutdown would wait for the others forever.
    watchdog = Watchdog(opts.dist_timeout, lambda what: stalled(opts, what))
    try:
        with watchdog.armed('waiting for the scheduler, the servers and the other workers to start'):
            kvstore = mx.kv.create(opts.kvstore)
        run(config, opts, argv, kvstore, watchdog)
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


def execution_settings(config, opts, argv):
    """``runtime.settle`` for the run's network (its own settings when resuming): may run
    this script again in place, with the settings measured fastest here."""
    if opts.resume:
        try:
            config, _ = resumed(config, copy.copy(opts), argv)
        except (rundir.RunError, OSError):
            return   # run() reports it
    if config.api == 'gluon':
        runtime.settle(config.network_name, config.flags(), input_dense=config.input_dense)


def execution(model):
    """The settings MXNet runs this process and ``model`` with (runtime.py), for config.json
    and the header: engine, wait policy, threads, sampler, the channel block of the CNN's
    convolutions (1: none; net.PaddedChannels), what computes the FCN's input layer
    (None: it has none; net.InputDense) and the cores other programs kept busy when the
    settings were chosen (None: not measured, the environment set them or the threads)."""
    busy = os.environ.get(runtime.BUSY_SEEN)
    return {'engine': os.environ.get(runtime.ENGINE, runtime.DEFAULT[runtime.ENGINE]),
            'omp_wait_policy': os.environ.get(runtime.WAIT), 'omp_threads': runtime.threads(),
            'sampler': sampler.name(), 'channel_block': getattr(model, 'channel_block', 1),
            'input_dense': getattr(model, 'input_dense', None),
            'busy_cores': int(busy) if busy else None}


def kept_epoch(out):
    """The epoch of the last complete checkpoint in ``out``, or None (also when its pointer
    cannot be read: for messages about a run that already failed)."""
    try:
        return rundir.checkpoint_epoch(out)
    except (rundir.RunError, OSError):
        return None


def stalled(opts, what):
    """The watchdog's message when a distributed run stops making progress."""
    done = kept_epoch(opts.out)
    return (f'error: no progress for {opts.dist_timeout:g} s (--dist-timeout) while {what}: a '
            f'worker, a server or the scheduler of this {opts.kvstore} run has stopped or cannot '
            f'be reached, so this worker stops too. ' + (
                f'The last complete checkpoint (epoch {done}) is kept in {opts.out}: start the '
                f'scheduler, the servers and the workers again, the workers with --resume'
                if done is not None else f'No checkpoint was written in {opts.out}: start the '
                f'run again'))


def run(config, opts, argv, kvstore='device', watchdog=None):
    """``train`` in ``opts.out``, held by ``rundir.lock`` (by rank 0 alone in a distributed
    run: the other workers write nothing); a RunError or OSError ends it with one line."""
    try:
        if getattr(kvstore, 'rank', 0) != 0:
            return train(config, opts, argv, kvstore, watchdog)
        os.makedirs(opts.out, exist_ok=True)
        with rundir.lock(opts.out):
            rundir.clean(opts.out)   # what an interrupted run may have left
            train(config, opts, argv, kvstore, watchdog)
    except rundir.RunError as e:
        sys.exit(f'error: {e}')
    except KeyboardInterrupt:   # before the first epoch (train's loop answers its own)
        done = kept_epoch(opts.out)
        sys.exit('\ninterrupted before training began; ' + (
            f'the checkpoint of epoch {done} is in {opts.out}: continue with python train.py '
            f'--out {opts.out} --resume' if done is not None else 'nothing was trained: start '
            'the run again'))
    except OSError as e:   # a bad --out, a full disk, a read-only folder
        done = kept_epoch(opts.out)
        sys.exit(f'error: {e.filename or opts.out}: {e.strerror or e}. Nothing half-written was '
                 f'left in {opts.out}' + (
                     f'; its last complete checkpoint (epoch {done}) is kept: fix the cause and '
                     f'continue with python train.py --out {opts.out} --resume' if done is not None
                     else '; fix the cause and start the run again'))


def load_data(config, opts):
    """The run's data (distort.Dataset) and its training images and labels (the first
    ``config.train_size`` of them)."""
    try:
        data = distort.load_dataset(config.dataset, opts.data_dir, config.data_seed)
    except mnist.MNISTError as e:
        raise rundir.RunError(e) from None
    train_x, train_y = data.train_x[:config.train_size], data.train_y[:config.train_size]
    if config.api == 'symbol' and config.batch_size > len(train_x):
        raise rundir.RunError(f'--batch-size {config.batch_size} is larger than the {len(train_x)} '
                              f'training images: --api symbol trains on whole batches only (its '
                              f'NDArrayIter drops the last partial one). Pass a smaller --batch-size')
    return data, train_x, train_y


def restore(model, out, epoch):
    """Load the checkpoint of ``epoch`` in ``out`` into ``model``; RunError if it is gone
    or damaged."""
    stem = rundir.checkpoint_stem(out, epoch)
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


def record_start(config, opts, model, train_x):
    """config.json of a new run (its settings and what they came to on this host)."""
    rundir.write_config(opts.out, dict(
        config.as_dict(), **vars(opts), num_params=model.num_params, train_images=len(train_x),
        pool_after_stn=config.pool_after_stn, image_shape=train_x.shape[1:],
        mxnet=mx.__version__, omp_threads=runtime.threads(), execution=execution(model),
        distortion=dict(distort.check_params(config.dataset, {}), version=distort.VERSION)))


def finish(config, opts, model, test_x, test_y):
    """The export after the last epoch, model.onnx where asked for, and compare.jpg."""
    prefix = rundir.export(opts.out, config.epochs, model.export)
    print(f'exported {prefix}-symbol.json and {prefix}-{config.epochs:04d}.params')
    if opts.onnx or os.path.exists(os.path.join(opts.out, rundir.ONNX)):   # never stale
        from stngluon import onnx_export   # onnx, only when asked for
        try:
            print(f'wrote {onnx_export.export(opts.out)}')
        except onnx_export.ConversionError as e:
            raise rundir.RunError(e) from None
    if config.transform != 'none':
        from stngluon import pictures   # matplotlib, only for the picture at the end
        print(f'wrote {pictures.compare_run(opts.out, test_x[:64], test_y[:64])}')


def one_epoch(model, epoch, train_x, train_y, test_x, test_y, armed, evaluate, start):
    """Train ``model`` one epoch and (where ``evaluate``) test it: its metrics.csv row, printed
    (epoch_s counted from ``start``)."""
    with armed(f'training epoch {epoch}'):
        train_loss, imgs_per_s = model.fit_epoch(epoch, train_x, train_y)
    if not evaluate:
        return None
    with armed(f'evaluating epoch {epoch} (its last update)'):
        test_loss, test_acc = model.evaluate(test_x, test_y)
    lr, took = model.learning_rate, time.time() - start
    print(f'{epoch:5d}  {train_loss:10.4f}  {test_loss:9.4f}  {100 * test_acc:7.2f}%  '
          f'{lr:6g}  {imgs_per_s:6.0f}  {took:7.1f}', flush=True)
    return dict(epoch=epoch, train_loss=f'{train_loss:.5f}', test_loss=f'{test_loss:.5f}',
                test_acc=f'{test_acc:.4f}', lr=f'{lr:g}', imgs_per_s=f'{imgs_per_s:.0f}',
                epoch_s=f'{took:.1f}')


def train(config, opts, argv, kvstore='device', watchdog=None):
    """The run of ``config`` in ``opts.out`` (held by ``rundir.lock``). ``kvstore``: a dist
    KVStore when this process is one worker of several; only rank 0 writes the run folder
    and evaluates, every worker trains its share of each global batch, with ``watchdog``
    (an engine.Watchdog) armed while it does."""
    writer, start_epoch = getattr(kvstore, 'rank', 0) == 0, 0
    if opts.resume:
        config, start_epoch = resumed(config, opts, argv)
        print(f'resuming {opts.out} after epoch {start_epoch} of {config.epochs}')
    if config.precision == 'bfloat16' and not runtime.bfloat16_native():
        model_name, isa = runtime.cpu()
        raise rundir.RunError(f'--precision bfloat16 needs a CPU with AVX-512 bf16 instructions '
                              f'(where oneDNN computes bfloat16 natively); this one, {model_name}, '
                              f'has {", ".join(isa)}: train with --precision float32')
    data, train_x, train_y = load_data(config, opts)
    test_x, test_y = data.test_x, data.test_y
    config = config.resolved()
    ctx = contexts(opts.ctx)
    mx.random.seed(config.seed)
    np.random.seed(config.seed)
    model = (GluonModel(config, train_x.shape, ctx, start_epoch, kvstore) if config.api == 'gluon'
             else ModuleModel(config, train_x.shape, ctx[0], start_epoch))
    armed = watchdog.armed if watchdog else lambda what: contextlib.nullcontext()
    if watchdog:
        model.beat = watchdog.beat
    warned = set()   # the transformers already reported lost (lost_transformers)
    if opts.resume:
        restore(model, opts.out, start_epoch)
        rows = rundir.read_metrics(opts.out, start_epoch)
        if writer:   # what --resume may change
            rundir.write_config(opts.out, dict(rundir.read_config(opts.out), epochs=config.epochs,
                                               lr=config.lr, onnx=opts.onnx))
    elif writer:
        rows = []
        record_start(config, opts, model, train_x)
        rundir.save_epoch(opts.out, 0, rows, model.save_params, model.save_states)  # for Ctrl-C
        snapshot(model, test_x[:16], opts.out, 0, warned)

    workers, settings = getattr(kvstore, 'num_workers', 1), execution(model)
    print(f'{config.display_name} ({config.api} API'
          + (f', {config.precision} classifier' if config.precision != 'float32' else '')
          + (' (--precision auto on this CPU)' if config.precision != 'float32'
             and not opts.resume and 'precision' not in given(argv) else '')
          + f'), {model.num_params} parameters, '
          f'{config.dataset}: {len(train_x)} training / {len(test_x)} test images '
          f'of {train_x.shape[2]}x{train_x.shape[3]}, ctx {",".join(map(str, ctx))}'
          + (f', worker {kvstore.rank} of {workers}' if workers > 1 else '')
          + ', {engine}, OpenMP {omp_threads} threads {omp_wait_policy}, {sampler}'.format(
              **settings)
          + (f', channels in {model.channel_block}s'
             if getattr(model, 'channel_block', 1) > 1 else '')
          + (f', input layer {model.input_dense}' if getattr(model, 'input_dense', None) else '')
          + (f', chosen with {settings["busy_cores"]} core(s) busy'
             if settings['busy_cores'] else ''),
          flush=True)   # seen at once in a worker's log
    if writer:
        print('epoch  train_loss  test_loss  test_acc      lr  imgs/s  epoch_s')
    epoch, resume = start_epoch, f'python train.py --out {opts.out} --resume'
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            start = time.time()   # epoch_s: fresh distortions, training and testing
            if config.fresh_distortions:
                train_x = distort.fresh_training_set(config.dataset, data.digits[:config.train_size],
                                                     config.data_seed, epoch)
            row = one_epoch(model, epoch, train_x, train_y, test_x, test_y, armed, writer, start)
            if writer:
                rows.append(dict(row, dataset=config.dataset))
                rundir.save_epoch(opts.out, epoch, rows, model.save_params, model.save_states)
                snapshot(model, test_x[:16], opts.out, epoch, warned)
        if workers > 1:   # every worker applied the same updates: the same weights
            print(f'worker {kvstore.rank} of {workers} ends with weights {model.fingerprint()}',
                  flush=True)
        if writer:
            finish(config, opts, model, test_x, test_y)
    except KeyboardInterrupt:
        done = rundir.checkpoint_epoch(opts.out)
        what = 'while exporting' if done == config.epochs else f'in epoch {epoch}'
        sys.exit(f'\ninterrupted {what}; the checkpoint of epoch {done} is in {opts.out}: '
                 f'continue with {resume}')
    except Diverged as e:
        sys.exit(f'error: {e}. Stopped; the last good checkpoint (epoch '
                 f'{rundir.checkpoint_epoch(opts.out)}) is kept in {opts.out}: continue with a '
                 f'smaller rate, {resume} --lr {config.lr / 10:g}, or lower --loc-lr-mult in a new run')


if __name__ == '__main__':
    main()
