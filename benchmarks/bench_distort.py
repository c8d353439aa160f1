"""Benchmark: how fast each distorted MNIST set is generated (images/s), no caching.

    python benchmarks/bench_distort.py [--count 70000] [--data-dir DIR]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root
from stngluon import distort, mnist  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--count', type=int, default=70000, help='images per set (MNIST has 70,000)')
    p.add_argument('--data-dir', default=None)
    args = p.parse_args()
    train_x, _, test_x, _ = mnist.load_mnist(args.data_dir)
    images = np.concatenate([train_x, test_x])
    images = np.concatenate([images] * (args.count // len(images) + 1))[:args.count]
    print(f'{"set":4s} {"images":>7s} {"seconds":>8s} {"images/s":>9s}  output')
    for name in distort.DATASETS[1:]:
        start = time.perf_counter()
        out, _ = distort.distort(name, images, seed=0)
        seconds = time.perf_counter() - start
        print(f'{name:4s} {len(out):7d} {seconds:8.2f} {len(out) / seconds:9.0f}  {out.shape[1:]}')


if __name__ == '__main__':
    main()
