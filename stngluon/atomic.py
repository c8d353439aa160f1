"""Atomic file writes: write a temp file beside the target, then rename it onto the target.

An interruption at any moment leaves the old file or the new one, never half of one.
"""
import os
import tempfile


def atomic_write(path, write):
    """Call ``write(tmp_path)``, then rename the temp file onto ``path`` (mode 0644)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path), suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, payload):
    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(payload)
    atomic_write(path, write)


def write_text(path, text):
    write_bytes(path, text.encode())


def write_npz(path, **arrays):
    """``np.savez_compressed`` to ``path``, atomically (any file name, no added .npz)."""
    import numpy as np

    def write(tmp):
        with open(tmp, 'wb') as f:
            np.savez_compressed(f, **arrays)
    atomic_write(path, write)
