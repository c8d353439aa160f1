"""MNIST: find, download, verify and load the four IDX files into memory.

Where the files are looked for, first match wins:
    1. the ``data_dir`` argument (``--data-dir`` in the scripts),
    2. the ``MNIST_DIR`` environment variable,
    3. ``data/mnist`` next to this file.
Each file may be raw (``train-images-idx3-ubyte``) or gzipped (``...-ubyte.gz``).
Missing files are downloaded from the public mirrors (tried in order) and kept
only if the SHA-256 of their *decompressed* bytes is the published one; the
.gz wrappers differ between mirrors, the IDX content does not.

Pixel scaling: images come back as float32 in [0, 1] (raw byte / 255), shape
(N, 1, 28, 28), with no mean/std normalisation, so that the zero padding of
``BilinearSampler`` equals the black background. Labels are int32 in 0..9.
"""
import gzip
import hashlib
import os
import urllib.request

import numpy as np

from stngluon import ROOT, atomic

DEFAULT_DIR = os.path.join(ROOT, 'data', 'mnist')

MIRRORS = [
    'https://ossci-datasets.s3.amazonaws.com/mnist/',
    'https://storage.googleapis.com/cvdf-datasets/mnist/',
    'http://yann.lecun.com/exdb/mnist/',
]

# name -> (SHA-256 of the decompressed IDX bytes, IDX magic number, shape)
FILES = {
    'train-images-idx3-ubyte': ('ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
                                2051, (60000, 28, 28)),
    'train-labels-idx1-ubyte': ('65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
                                2049, (60000,)),
    't10k-images-idx3-ubyte': ('0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
                               2051, (10000, 28, 28)),
    't10k-labels-idx1-ubyte': ('ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
                               2049, (10000,)),
}
TRAIN_IMAGES = FILES['train-images-idx3-ubyte'][2][0]   # 60,000: every set's training set

HOW_TO_SUPPLY = ('Put the four MNIST files (train-images-idx3-ubyte, train-labels-idx1-ubyte, '
                 't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz) in one folder and '
                 'pass it with --data-dir DIR or the MNIST_DIR environment variable.')


class MNISTError(RuntimeError):
    """A data file is missing, unreadable or not the MNIST file it claims to be."""


def data_dir_from(data_dir=None):
    """The folder to read: the argument, else $MNIST_DIR, else data/mnist."""
    return data_dir or os.environ.get('MNIST_DIR') or DEFAULT_DIR


def read_idx_bytes(path):
    """The decompressed bytes of a raw or .gz IDX file."""
    try:
        if path.endswith('.gz'):
            with gzip.open(path, 'rb') as f:
                return f.read()
        with open(path, 'rb') as f:
            return f.read()
    except PermissionError as e:
        raise MNISTError(f'{path}: cannot be read: permission denied ({e.strerror}). The file '
                         f'itself may be fine: make it readable (chmod a+r), or pass --data-dir '
                         f'a folder whose files you can read.') from e
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise MNISTError(f'{path}: cannot be read ({e}); the file is corrupt or truncated. '
                         f'Delete it and download it again. {HOW_TO_SUPPLY}') from e


def parse_idx(raw, path, magic=None, shape=None):
    """Parse IDX bytes of unsigned bytes (type 0x08) into a uint8 array.

    Checks the magic number, the dimension count and that the payload length
    equals the product of the header's dimensions; optionally that the magic
    and shape are the expected ones. ``path`` only names the file in errors.
    """
    if len(raw) < 4:
        raise MNISTError(f'{path}: only {len(raw)} bytes, too short for an IDX header; '
                         f'the file is truncated.')
    found_magic = int.from_bytes(raw[:4], 'big')
    ndim = raw[3]
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= ndim <= 4:
        raise MNISTError(f'{path}: bad magic number 0x{found_magic:08x} (expected an IDX file '
                         f'of unsigned bytes, 0x0000080N); this is not an MNIST IDX file.')
    if magic is not None and found_magic != magic:
        raise MNISTError(f'{path}: bad magic number {found_magic} (expected {magic}); '
                         f'images and labels may be swapped.')
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MNISTError(f'{path}: truncated header ({len(raw)} bytes).')
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    if shape is not None and dims != tuple(shape):
        raise MNISTError(f'{path}: wrong count or shape {dims} in the header (expected {shape}).')
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise MNISTError(f'{path}: {len(raw)} bytes but the header {dims} needs {expected}; '
                         f'the file is truncated or has trailing garbage.')
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_file(folder, name):
    """The path of ``name`` or ``name.gz`` in ``folder``, or None; MNISTError if one of them
    is there but is not a file (a folder, say)."""
    for candidate in (name, name + '.gz'):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
        if os.path.lexists(path):
            raise MNISTError(f'{path} is not a file (a folder or a broken link?), where the '
                             f'MNIST file {name} belongs: move it away or replace it with the '
                             f'file. {HOW_TO_SUPPLY}')
    return None


def download(name, folder, timeout=30):
    """Fetch ``name.gz`` from the first mirror that serves the right bytes.

    The download is verified (SHA-256 of the decompressed content) before it is
    renamed into place, so an interrupted or wrong download never lands.
    """
    sha = FILES[name][0]
    errors = []
    for mirror in MIRRORS:
        url = mirror + name + '.gz'
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
            content = gzip.decompress(payload)
        except Exception as e:  # network errors, HTTP errors, a broken gzip stream
            errors.append(f'{url}: {e}')
            continue
        if hashlib.sha256(content).hexdigest() != sha:
            errors.append(f'{url}: checksum mismatch')
            continue
        path = os.path.join(folder, name + '.gz')
        try:
            atomic.write_bytes(path, payload)
        except OSError as e:
            raise MNISTError(f'{name} was downloaded from {url} but cannot be saved as {path} '
                             f'({e.strerror or e}): make {folder} a writable folder, or pass '
                             f'--data-dir one') from e
        return path
    raise MNISTError(f'{name} is not in {folder} and could not be downloaded:\n  '
                     + '\n  '.join(errors) + f'\n{HOW_TO_SUPPLY}')


def load_file(folder, name, allow_download=True):
    """One verified MNIST file from ``folder`` as a uint8 array."""
    sha, magic, shape = FILES[name]
    path = find_file(folder, name)
    if path is None:
        if not allow_download:
            raise MNISTError(f'{name}[.gz] not found in {folder}. {HOW_TO_SUPPLY}')
        print(f'{name} not found in {folder}: downloading')
        path = download(name, folder)
    raw = read_idx_bytes(path)
    array = parse_idx(raw, path, magic, shape)
    if hashlib.sha256(raw).hexdigest() != sha:
        raise MNISTError(f'{path}: checksum mismatch: the decompressed bytes are not the '
                         f'published MNIST {name} (SHA-256 {sha[:12]}...). Replace the file.')
    return array


def load_mnist(data_dir=None, allow_download=True):
    """MNIST as four in-memory arrays.

    Returns ``(train_x, train_y, test_x, test_y)``: images float32 (N, 1, 28, 28)
    in [0, 1], labels int32 (N,); N is 60,000 for train and 10,000 for test.
    """
    folder = data_dir_from(data_dir)
    arrays = [load_file(folder, name, allow_download) for name in FILES]
    train_x, train_y, test_x, test_y = arrays
    to_images = lambda a: (a[:, None].astype(np.float32) / 255.0)
    return (to_images(train_x), train_y.astype(np.int32),
            to_images(test_x), test_y.astype(np.int32))
