"""Pictures of what the spatial transformer does.

    python visualize.py --out result     # result/compare.jpg from the run in result/

compare.jpg: a fixed batch of test digits ("Dataset Images") beside the
transformer's output for them ("Transformed Images"), shown as they are
(pixels in [0, 1], black background), with no de-normalisation.
"""
import argparse
import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402


def make_grid(images, nrow=8, pad=2, pad_value=0.5):
    """Tile images (N, C, H, W) into one (H', W') grayscale or (H', W', C) array, nrow per row."""
    n, c, h, w = images.shape
    rows = int(np.ceil(n / nrow))
    grid = np.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, images.dtype)
    for k in range(n):
        r, col = divmod(k, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = images[k]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_compare(net, images, path):
    """Write ``images`` (N, 1, H, W) in [0, 1] beside ``net.stn``'s output for them."""
    transformed, _ = net.stn(mx.nd.array(images))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, title, batch in zip(axes, ['Dataset Images', 'Transformed Images'],
                                [images, transformed.asnumpy()]):
        ax.imshow(make_grid(np.clip(batch, 0, 1)), cmap='gray', vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    import mnist
    from net import Net
    p = argparse.ArgumentParser(description='compare.jpg for a trained run')
    p.add_argument('--out', default='result', help='the run folder written by train.py')
    p.add_argument('--data-dir', default=None)
    args = p.parse_args()
    with open(os.path.join(args.out, 'checkpoint.json')) as f:
        epoch = json.load(f)['epoch']
    net = Net(use_stn=True)
    net.load_parameters(os.path.join(args.out, f'checkpoint-{epoch:04d}.params'))
    test_x = mnist.load_mnist(args.data_dir)[2]
    path = os.path.join(args.out, 'compare.jpg')
    save_compare(net, test_x[:64], path)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
