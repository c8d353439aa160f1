"""Train a spatial transformer network on MNIST or the paper's distorted MNIST sets.

    python train.py                      # 20 epochs, writes result/
    python train.py --no-stn --out result/lenet
    python train.py --resume             # continue the run in --out
    python train.py --dataset rts --model cnn --transform tps --out result/rts-st-cnn-tps
    python train.py --dataset rts --model cnn --transform tps --summary   # layers, no training

--model lenet|fcn|cnn picks the classifier (the seed LeNet, the paper's FCN or CNN) and
--transform none|affine|attention|projective|tps the transformer in front (--no-stn is
--transform none). fcn and cnn get the width that brings the model to its experiment's
parameter budget (net.fit_width, net.BUDGETS) unless --width is given, and on RTS and TC
average-pool the transformer's output 2x2 before the classifier (see net.py).

Everything a run makes goes into --out: config.json, metrics.csv (one row per
epoch), checkpoint-NNNN.{params,states} with checkpoint.json pointing at the
newest, the exported network (model-symbol.json + model-NNNN.params) and, with a
transformer of any family, compare.jpg (input digits with the regions the transformer
samples outlined, beside its output) and snapshots.npz (its output and those outlines
on 16 test digits after every epoch, for visualize.py --animate).
"""
import argparse
import csv
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')  # no banner on every Module reshape
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from tqdm import tqdm  # noqa: E402

import distort  # noqa: E402
from atomic import atomic_write, write_text  # noqa: E402
import mnist  # noqa: E402
import stn  # noqa: E402
import symbolic  # noqa: E402
import visualize  # noqa: E402
import net  # noqa: E402
from net import MODELS, Net  # noqa: E402

METRICS = ['dataset', 'epoch', 'train_loss', 'test_loss', 'test_acc', 'lr', 'imgs_per_s', 'epoch_s']
# Flags a resumed run takes from the run it continues; the others may change.
RUN_FLAGS = ['api', 'dataset', 'data_seed', 'fresh_distortions', 'batch_size', 'lr', 'lr_steps',
             'lr_factor', 'optimizer', 'momentum', 'loc_lr_mult', 'seed', 'no_stn', 'train_size',
             'model', 'transform', 'tps_grid', 'width']
TRANSFORMS = ['none', 'affine', 'attention', 'projective', 'tps']


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


def context(text):
    if text == 'cpu':
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f'{text!r}: use cpu or a GPU id such as 0')
    if int(text) >= mx.context.num_gpus():
        raise argparse.ArgumentTypeError(
            f'GPU {text} requested but this MXNet sees {mx.context.num_gpus()} GPU(s) '
            f'(the PyPI mxnet wheel is CPU-only; install mxnet-cuXXX for GPUs)')
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--api', choices=['gluon', 'symbol'], default='gluon',
                   help='Gluon HybridBlocks, or sym.SpatialTransformer trained with mx.mod.Module')
    p.add_argument('--dataset', choices=distort.DATASETS, default='mnist',
                   help='MNIST or one of the paper\'s distorted sets (see distort.py)')
    p.add_argument('--data-seed', type=int, default=0,
                   help='seed of the distorted train/test sets (the test set is fixed by it)')
    p.add_argument('--fresh-distortions', action='store_true',
                   help='distort the training digits anew every epoch instead of once')
    p.add_argument('--epochs', type=positive(int), default=20)
    p.add_argument('--batch-size', type=positive(int), default=64)
    p.add_argument('--optimizer', choices=['adam', 'sgd'], default='adam')
    p.add_argument('--lr', type=positive(float), default=0.001, help='initial learning rate')
    p.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    p.add_argument('--lr-steps', type=epoch_list, default=[12, 16],
                   help='epochs after which the learning rate is multiplied by --lr-factor')
    p.add_argument('--lr-factor', type=positive(float), default=0.1)
    p.add_argument('--loc-lr-mult', type=positive(float), default=0.1,
                   help='learning-rate multiplier of the localisation net and regressor')
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--model', choices=MODELS, default='lenet',
                   help='classifier: the seed LeNet, or the paper\'s FCN or CNN (see net.py)')
    p.add_argument('--transform', choices=TRANSFORMS, default=None,
                   help='spatial transformer family in front of the classifier (default: affine)')
    p.add_argument('--no-stn', action='store_true', help='no transformer: --transform none')
    p.add_argument('--tps-grid', type=positive(int), default=4,
                   help='--transform tps: N x N control points')
    p.add_argument('--width', type=positive(int), default=None,
                   help='fcn: hidden units, cnn: first-layer filters (default: fitted to the '
                        'experiment\'s parameter budget, net.BUDGETS)')
    p.add_argument('--summary', action='store_true',
                   help='print the layers and parameter counts of the model and exit')
    p.add_argument('--train-size', type=positive(int), default=None,
                   help='train on the first N training images only (quick runs)')
    p.add_argument('--data-dir', default=None,
                   help='folder with the MNIST files (default: $MNIST_DIR, else data/mnist)')
    p.add_argument('--out', default='result', help='folder for everything the run writes')
    p.add_argument('--ctx', type=context, default='cpu', help='cpu, or a GPU id')
    p.add_argument('--resume', action='store_true', help='continue from the checkpoint in --out')
    args = p.parse_args(argv)
    if not 0 <= args.momentum < 1:
        p.error(f'argument --momentum: {args.momentum} must be in [0, 1)')
    if args.no_stn and args.transform not in (None, 'none'):
        p.error(f'argument --no-stn: not allowed with --transform {args.transform}')
    args.transform = 'none' if args.no_stn else args.transform or 'affine'
    args.no_stn = args.transform == 'none'
    if args.tps_grid < 2:
        p.error(f'argument --tps-grid: {args.tps_grid} must be >= 2')
    if args.width is not None and args.model == 'lenet':
        p.error('argument --width: only for --model fcn or cnn (LeNet\'s sizes are fixed)')
    if args.api == 'symbol' and (args.model != 'lenet' or args.transform not in ('affine', 'none')):
        p.error(f'argument --api: symbol builds only --model lenet with --transform affine or '
                f'none, not --model {args.model} --transform {args.transform}; use --api gluon')
    return args


def write_metrics(path, rows):
    lines = [','.join(METRICS)] + [','.join(str(row[k]) for k in METRICS) for row in rows]
    write_text(path, '\n'.join(lines) + '\n')


def read_metrics(path, last_epoch):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [row for row in csv.DictReader(f) if int(row['epoch']) <= last_epoch]
    return rows


def save_checkpoint(out, epoch, model):
    """Write checkpoint-NNNN.{params,states}, then point checkpoint.json at them.

    The pointer is renamed into place last, so an interruption at any moment
    leaves checkpoint.json naming a complete earlier checkpoint.
    """
    stem = os.path.join(out, f'checkpoint-{epoch:04d}')
    atomic_write(stem + '.params', model.save_params)
    atomic_write(stem + '.states', model.save_states)
    previous = load_checkpoint_pointer(out)
    write_text(os.path.join(out, 'checkpoint.json'), json.dumps({'epoch': epoch}))
    if previous is not None and previous != epoch:
        for ext in ('.params', '.states'):
            old = os.path.join(out, f'checkpoint-{previous:04d}{ext}')
            if os.path.exists(old):
                os.remove(old)


def load_checkpoint_pointer(out):
    path = os.path.join(out, 'checkpoint.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)['epoch']


def learning_rate(args, epoch):
    """The learning rate for 1-based ``epoch``: step decay after each of --lr-steps."""
    return args.lr * args.lr_factor ** sum(epoch > step for step in args.lr_steps)


class NonFiniteLoss(RuntimeError):
    pass


def check_loss(mean, epoch, step):
    if not math.isfinite(mean):
        raise NonFiniteLoss(f'the training loss became {mean} in epoch {epoch} (batch {step})')


def epoch_order(args, epoch, n):
    """The shuffle of ``epoch``, and the dropout seed with it: a resumed run repeats both."""
    mx.random.seed(args.seed * 1000 + epoch)
    return np.random.RandomState(args.seed * 1000 + epoch).permutation(n)


def progress_bar(epoch, batches):
    return tqdm(total=batches, desc=f'epoch {epoch}', leave=False, unit='batch',
                file=sys.stderr, disable=None)


def pool_after_stn(args):
    """The paper's 2x2 average pooling after the transformer: FCN and CNN on RTS and TC."""
    return args.dataset in ('rts', 'tc') and args.model in ('fcn', 'cnn') and not args.no_stn


def resolve_width(args, image_shape):
    """Set an unset ``args.width`` of fcn/cnn to the one that meets the parameter budget."""
    if args.width is None and args.model != 'lenet':
        args.width = net.fit_width(args.model, args.transform, image_shape,
                                   pool_after_stn=pool_after_stn(args), tps_grid=args.tps_grid)


def build_net(args):
    """The net.Net of the run's flags (``args.width`` resolved)."""
    return Net(model=args.model, transform=args.transform, width=args.width,
               pool_after_stn=pool_after_stn(args), tps_grid=args.tps_grid,
               loc_lr_mult=args.loc_lr_mult)


def describe(args):
    """'STN (affine) + LeNet', 'ST-CNN (tps)', 'FCN', ..."""
    name = {'lenet': 'LeNet', 'fcn': 'FCN', 'cnn': 'CNN'}[args.model]
    if args.no_stn:
        return name
    if args.model == 'lenet':
        return f'STN ({args.transform}) + LeNet'
    return f'ST-{name} ({args.transform})'


def summary(args):
    """Print the layers of the run's network with their parameter counts (``Block.summary``)."""
    image_shape = distort.image_shape(args.dataset)
    resolve_width(args, image_shape)
    model = build_net(args)
    model.initialize(mx.init.Xavier(magnitude=2.24))
    x = mx.nd.zeros((1, *image_shape))
    model(x)
    print(f'{describe(args)} on {args.dataset} ({"x".join(map(str, image_shape[1:]))} inputs)'
          + (f', width {args.width}' if args.width else '')
          + (', 2x2 average pooling after the transformer' if pool_after_stn(args) else ''))
    model.summary(x)
    for name, part in [('transformer (localisation + regressor)', model.stn),
                       ('classifier', model.classifier)]:
        if part is not None:
            print(f'{name:40s} {net.trainable_params(part):>9,d}')
    print(f'{"total trainable":40s} {net.trainable_params(model):>9,d}'
          + (f'   (budget {net.BUDGETS[image_shape[1]]:,d})' if args.model != 'lenet' else ''))


class GluonModel:
    """net.Net trained with gluon.Trainer on batches sliced from the in-memory arrays."""

    def __init__(self, args, data_shape, ctx, begin_epoch=0):
        self.args, self.ctx = args, ctx
        image_shape = data_shape[1:]
        self.net = build_net(args)
        self.net.initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
        self.net.hybridize(static_alloc=True, static_shape=True)
        self.net(mx.nd.zeros((2, *image_shape), ctx=ctx))  # deferred init: shapes are known
        params = {'learning_rate': args.lr}
        if args.optimizer == 'sgd':
            params['momentum'] = args.momentum
        self.trainer = gluon.Trainer(self.net.collect_params(), args.optimizer, params)
        self.num_params = net.trainable_params(self.net)   # grid constants excluded

    def fit_epoch(self, epoch, x, y):
        """One pass over (x, y) in shuffled mini-batches; returns (mean loss, images/s)."""
        args, ctx = self.args, self.ctx
        self.trainer.set_learning_rate(learning_rate(args, epoch))
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        order = epoch_order(args, epoch, len(x))
        total, seen, start = mx.nd.zeros(1, ctx=ctx), 0, time.time()
        progress = progress_bar(epoch, math.ceil(len(x) / args.batch_size))
        for step, i in enumerate(range(0, len(x), args.batch_size), 1):
            idx = order[i:i + args.batch_size]
            data, label = mx.nd.array(x[idx], ctx=ctx), mx.nd.array(y[idx], ctx=ctx)
            with autograd.record():
                loss = loss_fn(self.net(data), label)
            loss.backward()
            self.trainer.step(len(idx))
            total += loss.sum()
            seen += len(idx)
            progress.update()
            if step % 50 == 0 or seen == len(x):
                check_loss(total.asscalar() / seen, epoch, step)
                progress.set_postfix(loss=f'{total.asscalar() / seen:.4f}')
        progress.close()
        return total.asscalar() / seen, seen / (time.time() - start)

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
        return mean_loss.get()[1], accuracy.get()[1]

    def transform(self, images):
        """The transformer's (output, theta) for ``images`` (N, C, H, W), as numpy arrays."""
        out, theta = self.net.stn(mx.nd.array(images, ctx=self.ctx))
        return out.asnumpy(), theta.asnumpy()

    def save_params(self, path):
        self.net.save_parameters(path)

    def save_states(self, path):
        self.trainer.save_states(path)

    def load(self, stem):
        self.net.load_parameters(stem + '.params', ctx=self.ctx)
        self.trainer.load_states(stem + '.states')

    def export(self, prefix, epoch):
        """``HybridBlock.export``: prefix-symbol.json and prefix-EPOCH.params."""
        self.net.export(prefix, epoch=epoch)


class ModuleModel:
    """symbolic.get_symbol() trained with mx.mod.Module.fit over mx.io.NDArrayIter.

    ``fit`` runs one epoch per call, so that the epoch loop, the checkpoints and the
    log line are the Gluon path's. The last partial batch of an epoch is dropped.
    """

    def __init__(self, args, data_shape, ctx, begin_epoch=0):
        """``begin_epoch``: epochs already done (the schedule counts updates from there)."""
        self.args = args
        num, *image_shape = data_shape
        symbol = symbolic.get_symbol(add_stn=not args.no_stn, target_shape=image_shape[1:],
                                     loc_lr_mult=args.loc_lr_mult)
        self.logits = symbolic.logits_of(symbol)
        quiet = logging.getLogger('module')
        quiet.setLevel(logging.ERROR)
        self.mod = mx.mod.Module(symbol, context=ctx, logger=quiet)
        self.mod.bind(data_shapes=[('data', (args.batch_size, *image_shape))],
                      label_shapes=[('softmax_label', (args.batch_size,))])
        self.mod.init_params(mx.init.Xavier(magnitude=2.24), allow_missing=True,
                             arg_params=symbolic.identity_params() if not args.no_stn else None)
        self.num_params = symbolic.count_params(symbol, (1, *image_shape))
        # Adam/SGD with the step schedule of --lr-steps, counted in updates.
        batches = num // args.batch_size
        params = {'learning_rate': args.lr, 'begin_num_update': begin_epoch * batches}
        if args.lr_steps:
            params['lr_scheduler'] = mx.lr_scheduler.MultiFactorScheduler(
                [s * batches for s in args.lr_steps], args.lr_factor)
        if args.optimizer == 'sgd':
            params['momentum'] = args.momentum
        self.mod.init_optimizer(optimizer=args.optimizer, optimizer_params=params)

    def fit_epoch(self, epoch, x, y):
        args = self.args
        order = epoch_order(args, epoch, len(x))
        batches = len(x) // args.batch_size
        data = mx.io.NDArrayIter(x[order], y[order], args.batch_size, shuffle=False,
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
        return loss.get()[1], batches * args.batch_size / (time.time() - start)

    def evaluate(self, x, y, batch_size=1000):
        """Mean cross-entropy and accuracy over every example of (x, y)."""
        probs = self.mod.predict(mx.io.NDArrayIter(x, y, batch_size,
                                                   label_name='softmax_label')).asnumpy()
        assert len(probs) == len(x)
        picked = probs[np.arange(len(y)), y]
        return float(-np.log(np.maximum(picked, 1e-12)).mean()), float((probs.argmax(1) == y).mean())

    def transform(self, images):
        """The transformer's (output, theta) for ``images`` (N, C, H, W), as numpy arrays."""
        internals = self.logits.get_internals()
        outputs = mx.sym.Group([internals['net_stn_transformer_output'],
                                internals['net_stn_regressor_fwd_output']])
        args, aux = self.mod.get_params()
        needed = {k: v for k, v in {**args, **aux}.items() if k in outputs.list_inputs()}
        out, theta = outputs.eval(ctx=mx.cpu(), data=mx.nd.array(images), **needed)
        return out.asnumpy(), theta.asnumpy()

    def save_params(self, path):
        self.mod.save_params(path)

    def save_states(self, path):
        self.mod.save_optimizer_states(path)

    def load(self, stem):
        self.mod.load_params(stem + '.params')
        self.mod.load_optimizer_states(stem + '.states')

    def export(self, prefix, epoch):
        """The logits symbol (no SoftmaxOutput) and the weights, laid out like a Gluon export."""
        args, aux = self.mod.get_params()
        self.logits.save(f'{prefix}-symbol.json')
        mx.nd.save(f'{prefix}-{epoch:04d}.params',
                   {**{f'arg:{k}': v for k, v in args.items()},
                    **{f'aux:{k}': v for k, v in aux.items()}})


def snapshot(model, images, out, epoch):
    """The transformer's output on a fixed batch and the outlines of the regions it
    samples, kept per epoch for stn_training.gif (runs with a transformer)."""
    args = model.args
    if not args.no_stn:
        transformed, theta = model.transform(images)
        grid = stn.sampling_grid(theta, args.transform, transformed.shape[2:], args.tps_grid)
        visualize.record_snapshot(images, transformed, grid, out, epoch)


def export(model, out, epoch):
    """Export ``model`` to out/model-symbol.json + out/model-EPOCH.params, atomically."""
    tmp = tempfile.mkdtemp(dir=out, prefix='.export')
    model.export(os.path.join(tmp, 'model'), epoch)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    os.rmdir(tmp)
    return os.path.join(out, 'model')


def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        return summary(args)
    os.makedirs(args.out, exist_ok=True)
    config_path = os.path.join(args.out, 'config.json')
    metrics_path = os.path.join(args.out, 'metrics.csv')
    start_epoch = 0
    if args.resume:
        start_epoch = load_checkpoint_pointer(args.out)
        if start_epoch is None:
            sys.exit(f'error: --resume: no checkpoint.json in {args.out}; '
                     f'start a new run without --resume')
        with open(config_path) as f:
            saved = json.load(f)
        for key in RUN_FLAGS:
            setattr(args, key, saved[key])
        print(f'resuming {args.out} after epoch {start_epoch} (run settings from {config_path})')

    ctx = mx.cpu() if args.ctx == 'cpu' else mx.gpu(int(args.ctx))
    try:
        digits = mnist.load_mnist(args.data_dir)
    except mnist.MNISTError as e:
        sys.exit(f'error: {e}')
    train_x, train_y, test_x, test_y = distort.load(args.dataset, digits, args.data_seed)
    digits = digits[0][:args.train_size] if args.fresh_distortions else None
    if args.train_size:
        train_x, train_y = train_x[:args.train_size], train_y[:args.train_size]

    resolve_width(args, train_x.shape[1:])
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    model = (GluonModel if args.api == 'gluon' else ModuleModel)(args, train_x.shape, ctx,
                                                                 start_epoch)

    if args.resume:
        model.load(os.path.join(args.out, f'checkpoint-{start_epoch:04d}'))
        rows = read_metrics(metrics_path, start_epoch)
    else:
        rows = []
        config = dict(vars(args), num_params=model.num_params, train_images=len(train_x),
                      pool_after_stn=pool_after_stn(args),
                      image_shape=train_x.shape[1:], mxnet=mx.__version__,
                      distortion=dict(distort.check_params(args.dataset, {}),
                                      version=distort.VERSION))
        write_text(config_path, json.dumps(config, indent=2) + '\n')
        save_checkpoint(args.out, 0, model)  # so that Ctrl-C always leaves one
        snapshot(model, test_x[:16], args.out, 0)
        write_metrics(metrics_path, rows)

    print(f'{describe(args)} ({args.api} API), '
          f'{model.num_params} parameters, '
          f'{args.dataset}: {len(train_x)} training / {len(test_x)} test images '
          f'of {train_x.shape[2]}x{train_x.shape[3]}, ctx {ctx}')
    print('epoch  train_loss  test_loss  test_acc      lr  imgs/s  epoch_s')
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, args.epochs + 1):
            start = time.time()
            if digits is not None:
                train_x = distort.distort(args.dataset, digits, (args.data_seed, 2, epoch))[0]
            train_loss, imgs_per_s = model.fit_epoch(epoch, train_x, train_y)
            test_loss, test_acc = model.evaluate(test_x, test_y)
            lr = learning_rate(args, epoch)
            rows.append(dict(dataset=args.dataset, epoch=epoch, train_loss=f'{train_loss:.5f}',
                             test_loss=f'{test_loss:.5f}', test_acc=f'{test_acc:.4f}', lr=f'{lr:g}',
                             imgs_per_s=f'{imgs_per_s:.0f}', epoch_s=f'{time.time() - start:.1f}'))
            print(f'{epoch:5d}  {train_loss:10.4f}  {test_loss:9.4f}  {100 * test_acc:7.2f}%  '
                  f'{lr:6g}  {imgs_per_s:6.0f}  {time.time() - start:7.1f}', flush=True)
            save_checkpoint(args.out, epoch, model)
            write_metrics(metrics_path, rows)
            snapshot(model, test_x[:16], args.out, epoch)
    except KeyboardInterrupt:
        sys.exit(f'\ninterrupted in epoch {epoch}; the checkpoint of epoch '
                 f'{load_checkpoint_pointer(args.out)} is in {args.out}: continue with '
                 f'python train.py --out {args.out} --resume')
    except NonFiniteLoss as e:
        sys.exit(f'error: {e}. Stopped; the last good checkpoint (epoch '
                 f'{load_checkpoint_pointer(args.out)}) is kept in {args.out}. '
                 f'Try a smaller --lr or --loc-lr-mult.')

    prefix = export(model, args.out, args.epochs)
    print(f'exported {prefix}-symbol.json and {prefix}-{args.epochs:04d}.params')
    if not args.no_stn:
        print(f'wrote {visualize.compare_run(args.out, test_x[:64], test_y[:64])}')


if __name__ == '__main__':
    main()
