"""Train a spatial transformer network (STN + LeNet) on MNIST with Gluon.

    python train.py                      # 20 epochs, writes result/
    python train.py --no-stn --out result/lenet
    python train.py --resume             # continue the run in --out

Everything a run makes goes into --out: config.json, metrics.csv (one row per
epoch), checkpoint-NNNN.{params,states} with checkpoint.json pointing at the
newest, the exported network (model-symbol.json + model-NNNN.params) and
compare.jpg (input digits beside the transformer's output).
"""
import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from tqdm import tqdm

import mnist
from net import Net

METRICS = ['epoch', 'train_loss', 'test_loss', 'test_acc', 'lr', 'imgs_per_s', 'epoch_s']
# Flags a resumed run takes from the run it continues; the others may change.
RUN_FLAGS = ['batch_size', 'lr', 'lr_steps', 'lr_factor', 'optimizer', 'momentum',
             'loc_lr_mult', 'seed', 'no_stn', 'train_size']


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
    p.add_argument('--no-stn', action='store_true', help='plain LeNet, no transformer')
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
    return args


def atomic_write(path, write):
    """Call ``write(tmp_path)``, then rename the temp file onto ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path), suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)


def write_metrics(path, rows):
    lines = [','.join(METRICS)] + [','.join(str(row[k]) for k in METRICS) for row in rows]
    write_text(path, '\n'.join(lines) + '\n')


def read_metrics(path, last_epoch):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [row for row in csv.DictReader(f) if int(row['epoch']) <= last_epoch]
    return rows


def save_checkpoint(out, epoch, net, trainer):
    """Write checkpoint-NNNN.{params,states}, then point checkpoint.json at them.

    The pointer is renamed into place last, so an interruption at any moment
    leaves checkpoint.json naming a complete earlier checkpoint.
    """
    stem = os.path.join(out, f'checkpoint-{epoch:04d}')
    atomic_write(stem + '.params', net.save_parameters)
    atomic_write(stem + '.states', trainer.save_states)
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


def export(net, out, epoch):
    """``HybridBlock.export`` to out/model-symbol.json + out/model-EPOCH.params, atomically."""
    tmp = tempfile.mkdtemp(dir=out, prefix='.export')
    net.export(os.path.join(tmp, 'model'), epoch=epoch)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    os.rmdir(tmp)
    return os.path.join(out, 'model')


def learning_rate(args, epoch):
    """The learning rate for 1-based ``epoch``: step decay after each of --lr-steps."""
    return args.lr * args.lr_factor ** sum(epoch > step for step in args.lr_steps)


def evaluate(net, x, y, ctx, batch_size=1000):
    """Mean cross-entropy and accuracy over every example of (x, y)."""
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    accuracy, mean_loss = mx.metric.Accuracy(), mx.metric.Loss()
    for i in range(0, len(x), batch_size):
        data = mx.nd.array(x[i:i + batch_size], ctx=ctx)
        label = mx.nd.array(y[i:i + batch_size], ctx=ctx)
        logits = net(data)
        accuracy.update(label, logits)
        mean_loss.update(None, loss_fn(logits, label))
    assert accuracy.num_inst == len(x)
    return mean_loss.get()[1], accuracy.get()[1]


class NonFiniteLoss(RuntimeError):
    pass


def train_epoch(net, trainer, x, y, args, epoch, ctx):
    """One pass over (x, y) in shuffled mini-batches sliced from the in-memory arrays.

    Returns (mean training loss, images per second).
    """
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    order = np.random.RandomState(args.seed * 1000 + epoch).permutation(len(x))
    mx.random.seed(args.seed * 1000 + epoch)  # dropout masks: a resumed run repeats them
    total, seen, start = mx.nd.zeros(1, ctx=ctx), 0, time.time()
    progress = tqdm(range(0, len(x), args.batch_size), desc=f'epoch {epoch}', leave=False,
                    unit='batch', file=sys.stderr, disable=None)
    for step, i in enumerate(progress):
        idx = order[i:i + args.batch_size]
        data, label = mx.nd.array(x[idx], ctx=ctx), mx.nd.array(y[idx], ctx=ctx)
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step(len(idx))
        total += loss.sum()
        seen += len(idx)
        if step % 50 == 0 or seen == len(x):
            mean = total.asscalar() / seen
            if not math.isfinite(mean):
                raise NonFiniteLoss(f'the training loss became {mean} in epoch {epoch} '
                                    f'(batch {step + 1})')
            progress.set_postfix(loss=f'{mean:.4f}')
    return total.asscalar() / seen, seen / (time.time() - start)


def main(argv=None):
    args = parse_args(argv)
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
        train_x, train_y, test_x, test_y = mnist.load_mnist(args.data_dir)
    except mnist.MNISTError as e:
        sys.exit(f'error: {e}')
    if args.train_size:
        train_x, train_y = train_x[:args.train_size], train_y[:args.train_size]

    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    net = Net(use_stn=not args.no_stn, loc_lr_mult=args.loc_lr_mult)
    net.initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    net(mx.nd.array(test_x[:2], ctx=ctx))  # runs deferred init so parameters can be loaded
    optimizer_params = {'learning_rate': learning_rate(args, start_epoch + 1)}
    if args.optimizer == 'sgd':
        optimizer_params['momentum'] = args.momentum
    trainer = gluon.Trainer(net.collect_params(), args.optimizer, optimizer_params)
    num_params = sum(p.data().size for p in net.collect_params().values())

    if args.resume:
        stem = os.path.join(args.out, f'checkpoint-{start_epoch:04d}')
        net.load_parameters(stem + '.params', ctx=ctx)
        trainer.load_states(stem + '.states')
        rows = read_metrics(metrics_path, start_epoch)
    else:
        rows = []
        config = dict(vars(args), dataset='mnist', num_params=num_params,
                      train_images=len(train_x), mxnet=mx.__version__)
        write_text(config_path, json.dumps(config, indent=2) + '\n')
        save_checkpoint(args.out, 0, net, trainer)  # so that Ctrl-C always leaves one
        write_metrics(metrics_path, rows)

    print(f'{"STN + LeNet" if not args.no_stn else "LeNet"}, {num_params} parameters, '
          f'{len(train_x)} training / {len(test_x)} test images, ctx {ctx}')
    print('epoch  train_loss  test_loss  test_acc      lr  imgs/s  epoch_s')
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, args.epochs + 1):
            start = time.time()
            trainer.set_learning_rate(learning_rate(args, epoch))
            train_loss, imgs_per_s = train_epoch(net, trainer, train_x, train_y, args, epoch, ctx)
            test_loss, test_acc = evaluate(net, test_x, test_y, ctx)
            row = dict(epoch=epoch, train_loss=f'{train_loss:.5f}', test_loss=f'{test_loss:.5f}',
                       test_acc=f'{test_acc:.4f}', lr=f'{trainer.learning_rate:g}',
                       imgs_per_s=f'{imgs_per_s:.0f}', epoch_s=f'{time.time() - start:.1f}')
            rows.append(row)
            print(f'{epoch:5d}  {train_loss:10.4f}  {test_loss:9.4f}  {100 * test_acc:7.2f}%  '
                  f'{trainer.learning_rate:6g}  {imgs_per_s:6.0f}  {time.time() - start:7.1f}',
                  flush=True)
            save_checkpoint(args.out, epoch, net, trainer)
            write_metrics(metrics_path, rows)
    except KeyboardInterrupt:
        sys.exit(f'\ninterrupted in epoch {epoch}; the checkpoint of epoch '
                 f'{load_checkpoint_pointer(args.out)} is in {args.out}: continue with '
                 f'python train.py --out {args.out} --resume')
    except NonFiniteLoss as e:
        sys.exit(f'error: {e}. Stopped; the last good checkpoint (epoch '
                 f'{load_checkpoint_pointer(args.out)}) is kept in {args.out}. '
                 f'Try a smaller --lr or --loc-lr-mult.')

    prefix = export(net, args.out, args.epochs)
    print(f'exported {prefix}-symbol.json and {prefix}-{args.epochs:04d}.params')
    if not args.no_stn:
        import visualize
        path = os.path.join(args.out, 'compare.jpg')
        visualize.save_compare(net, test_x[:64], path)
        print(f'wrote {path}')


if __name__ == '__main__':
    main()
