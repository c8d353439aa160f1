"""Pictures of what the spatial transformer does, and of how training went.

    python visualize.py --out result                    # result/compare.jpg
    python visualize.py --out result --animate          # result/stn_training.gif
    python visualize.py --curves result/rts-stn result/rts-lenet --out result   # result/curves.png
    python visualize.py --dataset rts --samples --out result                    # result/samples_rts.png

compare.jpg: a fixed batch of test digits (the first 64 of the run's test set,
"Dataset Images") beside the transformer's output for them ("Transformed
Images"), shown as they are (pixels in [0, 1], black background). On each input
the region the transformer samples from is outlined, as in the paper's figures:
the border of the output mapped through the sampling grid, a quadrilateral for the
affine, attention and projective families, a curve for TPS (clipped to the tile);
each output carries the predicted class, in red where it is wrong. It needs only
the exported network (model-symbol.json + model-NNNN.params): the transformer's
output and sampling grid are picked from the symbol's internals by name.

curves.png: train and test loss and test error per epoch from metrics.csv, one
colour per run folder.

stn_training.gif: the transformer's output on a fixed batch after every epoch, with
the outlines of the sampled regions, from the snapshots.npz that training writes
(``rundir.record_snapshot``).
"""
import argparse
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from stngluon import runtime  # noqa: E402
runtime.configure()   # OpenMP threads and wait policy, before MXNet loads
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

import net  # noqa: E402
from stngluon import distort, mnist, rundir  # noqa: E402
from stngluon.pictures import compare_figure, compare_run, load_model, save_samples  # noqa: E402
from stngluon.rundir import RunError  # noqa: E402


def load_test_set(dataset, data_dir, seed):
    data = distort.load_dataset(dataset, data_dir, seed)
    return data.test_x, data.test_y


# ---- stn_training.gif -----------------------------------------------------------------

def render(fig):
    """A matplotlib figure as an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_animation(path, inputs, frames, outlines, epochs, ms_per_frame=500):
    """A GIF (640 x 340 pixels), one frame per epoch: the inputs (N, 1, H, W) with that
    epoch's outlines (E, N, M, 2) beside its output frames (E, N, 1, H', W'), as
    ``rundir.read_snapshots`` gives them."""
    nrow = int(np.ceil(np.sqrt(len(inputs))))
    pictures = []
    for frame, lines, epoch in zip(frames, outlines, epochs):
        fig = compare_figure(inputs, frame, lines, nrow=nrow, figsize=(6.4, 3.4),
                             title=f'epoch {epoch}' + (' (before training)' if epoch == 0 else ''))
        pictures.append(Image.fromarray(render(fig)).quantize(64))
        plt.close(fig)
    durations = [ms_per_frame] * (len(pictures) - 1) + [4 * ms_per_frame]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)


# ---- curves.png -----------------------------------------------------------------------

def metric_arrays(run_dir):
    """Per-epoch arrays epoch, train_loss, test_loss, test_acc from RUN/metrics.csv."""
    rows = rundir.read_metrics(run_dir)
    if not rows:
        raise RunError(f'{run_dir}/metrics.csv has no epochs yet: let the run finish an epoch first.')
    return {key: rundir.column(rows, key) for key in ('epoch', 'train_loss', 'test_loss', 'test_acc')}


def run_label(run_dir):
    """'FOLDER (network, dataset)' from the run's config.json, for legends."""
    config = rundir.read_config(run_dir)
    model = net.display_name(*(config.get(k, default) for k, default in (
        ('model', 'lenet'), ('transform', 'affine'), ('transformers', 1),
        ('stn_at', ['input']), ('per_channel', False), ('iterations', 1),
        ('loc_per_step', False))))
    name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    return f'{name} ({model}, {config.get("dataset", "mnist")})'


def minor_label(value, _):
    """Label the minor ticks 2 and 5 of each decade of a log axis."""
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f'{value:g}' if round(mantissa) in (2, 5) else ''


LEGEND_ROW = 0.2   # inches of curves.png's height per run, for the legend under the panels


def curves_figure(run_dirs):
    """Loss (train dashed, test solid) and test error per epoch, one colour per run folder;
    one legend under both panels, a line per run with its last test error."""
    height = 4 + LEGEND_ROW * len(run_dirs)
    fig, (loss_ax, error_ax) = plt.subplots(1, 2, figsize=(10, height))
    for k, run_dir in enumerate(run_dirs):
        m, color, label = metric_arrays(run_dir), f'C{k}', run_label(run_dir)
        loss_ax.plot(m['epoch'], m['train_loss'], '--', color=color)
        loss_ax.plot(m['epoch'], m['test_loss'], '-', color=color)
        error = 100 * (1 - m['test_acc'])
        error_ax.plot(m['epoch'], error, 'o-', color=color, markersize=3,
                      label=f'{label}: {error[-1]:.2f}%')
    loss_ax.set(xlabel='epoch', ylabel='cross-entropy loss', yscale='log', title='Loss')
    error_ax.set(xlabel='epoch', ylabel='test error (%)', yscale='log', title='Test error')
    for ax in (loss_ax, error_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
        ax.yaxis.set_minor_formatter(FuncFormatter(minor_label))
        ax.grid(True, which='both', alpha=0.3)
    loss_ax.legend([plt.Line2D([], [], color='grey', linestyle=style) for style in ('--', '-')],
                   ['train', 'test'], fontsize=8)
    fig.legend(*error_ax.get_legend_handles_labels(), loc='lower center', fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, LEGEND_ROW * (len(run_dirs) + 0.5) / height, 1, 1))
    return fig


def write_curves(path, run_dirs):
    """curves.png, 1000 pixels wide and 400 high plus 20 a run (the legend), for the run
    folders ``run_dirs``."""
    fig = curves_figure(run_dirs)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description='compare.jpg, curves.png and stn_training.gif of runs')
    p.add_argument('--out', default='result',
                   help='the run folder written by train.py (with --curves: where curves.png goes)')
    p.add_argument('--dataset', choices=distort.DATASETS, default=None,
                   help='test images to show (default: the run\'s dataset from its config.json)')
    p.add_argument('--data-dir', default=None, help='MNIST folder (default: $MNIST_DIR, else data/mnist)')
    p.add_argument('--curves', nargs='*', metavar='RUN_DIR', default=None,
                   help='write OUT/curves.png for these run folders (none given: OUT itself)')
    p.add_argument('--animate', action='store_true',
                   help='write OUT/stn_training.gif from OUT/snapshots.npz')
    p.add_argument('--samples', action='store_true',
                   help='write OUT/samples_DATASET.png, 64 test images of the set')
    args = p.parse_args(argv)
    try:
        draw(args)
    except (RunError, mnist.MNISTError) as e:
        raise SystemExit(f'error: {e}')


def draw(args):
    """What ``main``'s flags ask for."""
    config = rundir.read_config(args.out)
    dataset = args.dataset or config.get('dataset', 'mnist')
    seed = config.get('data_seed', 0)

    if args.samples:
        os.makedirs(args.out, exist_ok=True)
        test_x = load_test_set(dataset, args.data_dir, seed)[0]
        path = os.path.join(args.out, f'samples_{dataset}.png')
        save_samples(test_x[:64], path, f'{dataset.upper()}: test images')
        print(f'wrote {path}')
    if args.curves is not None:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, 'curves.png')
        write_curves(path, args.curves or [args.out])
        print(f'wrote {path}')
    if args.animate:
        path = os.path.join(args.out, 'stn_training.gif')
        write_animation(path, *rundir.read_snapshots(args.out))
        print(f'wrote {path}')
    if args.samples or args.curves is not None or args.animate:
        return

    if not os.path.isdir(args.out):
        raise RunError(f'no run folder {args.out}: pass --out RUN_DIR written by train.py')
    shape = distort.image_shape(dataset)
    model = load_model(args.out, shape)  # model problems are reported before the data loads
    test_x, test_y = load_test_set(dataset, args.data_dir, seed)
    print(f'wrote {compare_run(args.out, test_x[:64], test_y[:64], model)}')


if __name__ == '__main__':
    main()
