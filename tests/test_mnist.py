"""Loading MNIST: raw or gzipped IDX files, clear errors for bad ones, verified downloads."""
import functools
import hashlib
import gzip
import http.server
import os
import threading

import numpy as np
import pytest

from stngluon import mnist

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'mnist')
REAL_DIR = os.environ.get('MNIST_DIR') or (SHARED if os.path.isdir(SHARED) else None)
REAL_DIR = REAL_DIR and os.path.abspath(REAL_DIR)
needs_mnist = pytest.mark.skipif(
    not (REAL_DIR and mnist.find_file(REAL_DIR, 't10k-labels-idx1-ubyte')),
    reason='MNIST not available (set MNIST_DIR)')


def idx_bytes(array, magic):
    header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path, payload):
    if str(path).endswith('.gz'):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return str(path)


@pytest.fixture
def images():
    return np.random.RandomState(0).randint(0, 256, size=(5, 28, 28)).astype(np.uint8)


@pytest.mark.parametrize('name', ['imgs-idx3-ubyte', 'imgs-idx3-ubyte.gz'])
def test_reads_raw_and_gzipped_idx_files(tmp_path, images, name):
    path = write(tmp_path / name, idx_bytes(images, 2051))
    array = mnist.parse_idx(mnist.read_idx_bytes(path), path, magic=2051, shape=(5, 28, 28))
    np.testing.assert_array_equal(array, images)


def test_rejects_a_bad_magic_number(tmp_path, images):
    path = write(tmp_path / 'x-idx3-ubyte', b'\x12\x34\x56\x78' + idx_bytes(images, 2051)[4:])
    with pytest.raises(mnist.MNISTError, match=r'x-idx3-ubyte: bad magic number'):
        mnist.parse_idx(mnist.read_idx_bytes(path), path)


def test_rejects_labels_given_as_images(tmp_path):
    path = write(tmp_path / 'labels', idx_bytes(np.zeros(7), 2049))
    with pytest.raises(mnist.MNISTError, match=r'labels: bad magic number 2049 \(expected 2051\)'):
        mnist.parse_idx(mnist.read_idx_bytes(path), path, magic=2051)


@pytest.mark.parametrize('keep', [2, 10, -100], ids=['in-magic', 'in-header', 'in-pixels'])
def test_rejects_a_truncated_file(tmp_path, images, keep):
    path = write(tmp_path / 'x-idx3-ubyte', idx_bytes(images, 2051)[:keep])
    with pytest.raises(mnist.MNISTError, match='truncated'):
        mnist.parse_idx(mnist.read_idx_bytes(path), path)


def test_rejects_a_corrupt_gzip_file(tmp_path, images):
    path = tmp_path / 'x-idx3-ubyte.gz'
    path.write_bytes(gzip.compress(idx_bytes(images, 2051))[:-40])
    with pytest.raises(mnist.MNISTError, match=r'x-idx3-ubyte.gz: cannot be read.*corrupt'):
        mnist.read_idx_bytes(str(path))


def test_rejects_the_wrong_count(tmp_path):
    write(tmp_path / 't10k-labels-idx1-ubyte', idx_bytes(np.zeros(9999), 2049))
    with pytest.raises(mnist.MNISTError, match=r't10k-labels-idx1-ubyte: wrong count'):
        mnist.load_file(str(tmp_path), 't10k-labels-idx1-ubyte', allow_download=False)


def test_rejects_well_formed_files_with_the_wrong_content(tmp_path):
    write(tmp_path / 't10k-labels-idx1-ubyte.gz', idx_bytes(np.zeros(10000), 2049))
    with pytest.raises(mnist.MNISTError, match='checksum mismatch'):
        mnist.load_file(str(tmp_path), 't10k-labels-idx1-ubyte', allow_download=False)


def test_folder_precedence_argument_then_environment_then_default(monkeypatch):
    monkeypatch.setenv('MNIST_DIR', '/from/env')
    assert mnist.data_dir_from('/from/flag') == '/from/flag'
    assert mnist.data_dir_from(None) == '/from/env'
    monkeypatch.delenv('MNIST_DIR')
    assert mnist.data_dir_from(None) == mnist.DEFAULT_DIR


def test_missing_files_without_network_give_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, 'MIRRORS', ['http://127.0.0.1:9/'])  # nothing listens there
    with pytest.raises(mnist.MNISTError) as error:
        mnist.load_mnist(str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and 'could not be downloaded' in message
    assert '--data-dir' in message and 'MNIST_DIR' in message
    assert os.listdir(tmp_path) == []


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server playing a mirror; returns (folder it serves, base URL)."""
    served = tmp_path / 'mirror'
    served.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f'http://127.0.0.1:{server.server_address[1]}/'
    server.shutdown()


def test_a_download_with_the_wrong_content_is_not_kept(tmp_path, mirror, monkeypatch):
    served, url = mirror
    write(served / 't10k-labels-idx1-ubyte.gz', idx_bytes(np.zeros(10000), 2049))
    monkeypatch.setattr(mnist, 'MIRRORS', [url])
    target = tmp_path / 'data'
    with pytest.raises(mnist.MNISTError, match='checksum mismatch'):
        mnist.download('t10k-labels-idx1-ubyte', str(target))
    assert not target.exists() or os.listdir(target) == []


@needs_mnist
def test_download_falls_back_to_the_next_mirror_and_verifies(tmp_path, mirror, monkeypatch):
    served, url = mirror
    name = 't10k-labels-idx1-ubyte'
    source = mnist.find_file(REAL_DIR, name)
    payload = open(source, 'rb').read()
    (served / (name + '.gz')).write_bytes(payload if source.endswith('.gz')
                                          else gzip.compress(payload))
    monkeypatch.setattr(mnist, 'MIRRORS', [url + 'missing/', url])
    target = tmp_path / 'data'
    labels = mnist.load_file(str(target), name)
    assert labels.shape == (10000,)
    assert os.listdir(target) == [name + '.gz']


@needs_mnist
def test_real_mnist_loads_with_the_published_label_counts():
    train_x, train_y, test_x, test_y = mnist.load_mnist(REAL_DIR, allow_download=False)
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert train_x.dtype == np.float32 and train_x.min() == 0 and train_x.max() == 1
    assert list(np.bincount(train_y)) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert list(np.bincount(test_y)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_mnist
def test_a_raw_copy_of_a_real_file_is_read_like_the_gz(tmp_path):
    name = 't10k-labels-idx1-ubyte'
    raw = mnist.read_idx_bytes(mnist.find_file(REAL_DIR, name))
    (tmp_path / name).write_bytes(raw)
    np.testing.assert_array_equal(mnist.load_file(str(tmp_path), name, allow_download=False),
                                  mnist.load_file(REAL_DIR, name, allow_download=False))


@pytest.fixture
def fake_file(monkeypatch):
    """A 3-label IDX file that mnist.FILES takes for MNIST's test labels: (name, its bytes)."""
    name, raw = 't10k-labels-idx1-ubyte', idx_bytes(np.array([7, 2, 1]), 2049)
    monkeypatch.setitem(mnist.FILES, name, (hashlib.sha256(raw).hexdigest(), 2049, (3,)))
    return name, raw


@pytest.mark.parametrize('online', [False, True])
@pytest.mark.parametrize('suffix', ['', '.gz'])
def test_a_folder_where_a_data_file_belongs_is_named_as_such(tmp_path, mirror, monkeypatch,
                                                            fake_file, online, suffix):
    name, raw = fake_file
    served, url = mirror
    write(served / (name + '.gz'), raw)
    monkeypatch.setattr(mnist, 'MIRRORS', [url] if online else ['http://127.0.0.1:9/'])
    (tmp_path / (name + suffix)).mkdir()
    with pytest.raises(mnist.MNISTError, match=f'{name}{suffix} is not a file .*, where the MNIST '
                                               f'file {name} belongs'):
        mnist.load_file(str(tmp_path), name)


def test_a_download_that_cannot_be_saved_says_so(tmp_path, mirror, monkeypatch, fake_file):
    name, raw = fake_file
    served, url = mirror
    write(served / (name + '.gz'), raw)
    monkeypatch.setattr(mnist, 'MIRRORS', [url])

    def read_only(path, payload):
        raise PermissionError(13, 'Permission denied', path)
    monkeypatch.setattr(mnist.atomic, 'write_bytes', read_only)
    with pytest.raises(mnist.MNISTError, match=f'{name} was downloaded from .* but cannot be saved '
                                               f'.*Permission denied.*writable folder'):
        mnist.load_file(str(tmp_path), name)


def test_an_unreadable_file_is_a_permission_problem_not_corruption(tmp_path, monkeypatch,
                                                                   fake_file):
    name, raw = fake_file
    write(tmp_path / (name + '.gz'), raw)

    def denied(path, mode='rb'):
        raise PermissionError(13, 'Permission denied', path)
    monkeypatch.setattr(mnist.gzip, 'open', denied)
    with pytest.raises(mnist.MNISTError) as error:
        mnist.load_file(str(tmp_path), name)
    assert 'permission denied' in str(error.value) and 'corrupt' not in str(error.value)
    assert 'Delete it' not in str(error.value)
