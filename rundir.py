"""The run folder: what a training run writes, and how every script reads it back.

    RUN/config.json                   the run's flags and facts          write_config, read_config
    RUN/metrics.csv                   one row per epoch, METRICS          write_metrics, read_metrics
    RUN/checkpoint-NNNN.params/.states, checkpoint.json (the pointer)     save_checkpoint,
                                                                          checkpoint_epoch, checkpoint_stem
    RUN/model-symbol.json, model-NNNN.params  the exported network        export, model_files
    RUN/snapshots.npz                 the transformer on 16 digits per epoch  record_snapshot, read_snapshots
    RUN/result.json                   a finished Table 1 cell (reproduce.py)  write_result, read_result
    RUN/compare.jpg, curves.png, stn_training.gif   pictures (visualize.py)

and the names of the transformer's nodes inside an exported symbol (TRANSFORMED, THETA,
GRIDS, GRID_CONSTANTS). Every write is atomic (temp file + rename). A missing or
unreadable file raises ``RunError`` with a message naming it and what to do. numpy
only, no MXNet: reproduce.py reads run folders without importing it.
"""
import csv
import glob
import json
import os
import re
import tempfile
import zipfile

import numpy as np

import atomic
from geometry import outline

METRICS = ['dataset', 'epoch', 'train_loss', 'test_loss', 'test_acc', 'lr', 'imgs_per_s', 'epoch_s']
SNAPSHOT_SIDE = 16   # segments per side of the outlines kept in snapshots.npz

# The transformer's outputs inside an exported symbol. net.Net's Gluon export (stn.py) and
# symbolic.py's sym.SpatialTransformer give them these names; the grid is GridGenerator's
# (affine, attention) or stn.py's 'grid' (projective, tps); sym.SpatialTransformer makes
# its grid inside the operator, so it has none (visualize.py rebuilds it from theta).
GLUON_TRANSFORMED, SYMBOL_TRANSFORMED = 'net_stn_bilinearsampler0_output', 'net_stn_transformer_output'
TRANSFORMED = (GLUON_TRANSFORMED, SYMBOL_TRANSFORMED)
THETA = 'net_stn_regressor_fwd_output'
GRIDS = ('net_stn_gridgenerator0_output', 'net_stn_grid_output')
GRID_CONSTANTS = ('net_stn_target_grid', 'net_stn_tps_basis')   # stn.FAMILIES' constant_name


class RunError(RuntimeError):
    """A file of a run folder is missing, unreadable or inconsistent (the message says which)."""


def read_json(path):
    """The JSON object in ``path``; RunError if it is missing or not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunError(f'{path} not found') from None
    except (OSError, ValueError) as e:
        raise RunError(f'{path} is not valid JSON ({e})') from None


# ---- config.json ----------------------------------------------------------------------

def write_config(run_dir, config):
    atomic.write_text(os.path.join(run_dir, 'config.json'), json.dumps(config, indent=2) + '\n')


def read_config(run_dir):
    """The run's config.json as a dict ({} if there is none)."""
    path = os.path.join(run_dir, 'config.json')
    return read_json(path) if os.path.exists(path) else {}


# ---- metrics.csv ----------------------------------------------------------------------

def write_metrics(run_dir, rows):
    """metrics.csv with one line per row (dicts with the METRICS keys), atomically."""
    lines = [','.join(METRICS)] + [','.join(str(row[k]) for k in METRICS) for row in rows]
    atomic.write_text(os.path.join(run_dir, 'metrics.csv'), '\n'.join(lines) + '\n')


def read_metrics(run_dir, last_epoch=None):
    """The rows of metrics.csv as dicts of strings, up to ``last_epoch`` if given."""
    path = os.path.join(run_dir, 'metrics.csv')
    try:
        with open(path) as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise RunError(f'{path} not found: pass a run folder written by train.py') from None
    if rows and not set(METRICS) <= set(rows[0]):
        raise RunError(f'{path} lacks the columns {sorted(set(METRICS) - set(rows[0]))}')
    return [row for row in rows if last_epoch is None or int(row['epoch']) <= last_epoch]


def column(rows, key):
    """One metrics column as a float array."""
    return np.array([float(row[key]) for row in rows])


# ---- checkpoints ----------------------------------------------------------------------

def checkpoint_stem(run_dir, epoch):
    """RUN/checkpoint-NNNN: add .params (weights) or .states (optimizer state)."""
    return os.path.join(run_dir, f'checkpoint-{epoch:04d}')


def checkpoint_epoch(run_dir):
    """The epoch of the run's newest complete checkpoint, or None if it has none."""
    path = os.path.join(run_dir, 'checkpoint.json')
    return read_json(path)['epoch'] if os.path.exists(path) else None


def save_checkpoint(run_dir, epoch, save_params, save_states):
    """Write checkpoint-NNNN.{params,states} with ``save_params(path)`` and
    ``save_states(path)``, then point checkpoint.json at them and delete the older one.

    The pointer is renamed into place last, so an interruption at any moment leaves
    checkpoint.json naming a complete checkpoint.
    """
    stem = checkpoint_stem(run_dir, epoch)
    atomic.atomic_write(stem + '.params', save_params)
    atomic.atomic_write(stem + '.states', save_states)
    previous = checkpoint_epoch(run_dir)
    atomic.write_text(os.path.join(run_dir, 'checkpoint.json'), json.dumps({'epoch': epoch}))
    if previous is not None and previous != epoch:
        for ext in ('.params', '.states'):
            old = checkpoint_stem(run_dir, previous) + ext
            if os.path.exists(old):
                os.remove(old)


# ---- the exported network -------------------------------------------------------------

def export(run_dir, epoch, export_fn):
    """``export_fn(prefix, epoch)`` writes PREFIX-symbol.json and PREFIX-NNNN.params
    (``HybridBlock.export``'s layout) into a temp folder, then both are renamed to
    RUN/model-*; returns RUN/model."""
    tmp = tempfile.mkdtemp(dir=run_dir, prefix='.export')
    try:
        export_fn(os.path.join(tmp, 'model'), epoch)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(run_dir, name))
    finally:
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)
    return os.path.join(run_dir, 'model')


def model_files(model, epoch=None):
    """(symbol file, params file, prefix, epoch) of an export: ``model`` is a run folder
    (prefix RUN/model) or a file prefix; ``epoch`` None takes the newest PREFIX-NNNN.params,
    so a run extended by --resume is read with its newest weights."""
    prefix = os.path.join(model, 'model') if os.path.isdir(model) else model
    symbol = f'{prefix}-symbol.json'
    if epoch is None:
        found = sorted(glob.glob(f'{glob.escape(prefix)}-[0-9][0-9][0-9][0-9].params'))
        epoch = int(re.search(r'-(\d{4})\.params$', found[-1]).group(1)) if found else None
    params = f'{prefix}-NNNN.params' if epoch is None else f'{prefix}-{epoch:04d}.params'
    for path in (symbol, params):
        if not os.path.isfile(path):
            raise RunError(f'{path} not found: {model} holds no exported model. train.py writes '
                           f'model-symbol.json and model-NNNN.params when a run finishes: finish '
                           f'an interrupted run (python train.py --out RUN_DIR --resume) or pass '
                           f'the folder (or file prefix) of a finished run.')
    return symbol, params, prefix, epoch


# ---- snapshots.npz --------------------------------------------------------------------

def to_uint8(images):
    return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)


def record_snapshot(run_dir, epoch, images, transformed, grid):
    """Store the transformer's output for a fixed batch after ``epoch`` in RUN/snapshots.npz.

    ``images`` (N, 1, H, W) in [0, 1], e.g. test_x[:16] (16 images make a 4 x 4
    animation), and the transformer's ``transformed`` (N, 1, H', W') and sampling ``grid``
    (N, 2, H', W') for them (stn.sampling_grid), numpy arrays. Epoch 0 is before
    training. The file holds inputs (N, 1, H, W) uint8, frames (E, N, 1, H', W') uint8,
    outlines (E, N, M, 2) float32 (``geometry.outline`` with per_side=SNAPSHOT_SIDE: M = 64
    for outputs of 17 pixels or more a side, about 8 KB per epoch for 16 images) and
    epochs (E,); frames of epochs >= ``epoch`` (a resumed run) and of another input
    batch are dropped. Written atomically.
    """
    inputs, frame = to_uint8(images), to_uint8(transformed)
    lines = outline(grid, *images.shape[2:], per_side=SNAPSHOT_SIDE).astype(np.float32)
    path = os.path.join(run_dir, 'snapshots.npz')
    epochs, frames, outlines = np.zeros(0, np.int64), frame[None][:0], lines[None][:0]
    try:
        old_inputs, old_frames, old_outlines, old_epochs = read_snapshots(run_dir)
        if np.array_equal(old_inputs, inputs) and old_outlines.shape[1:] == lines.shape:
            keep = old_epochs < epoch
            epochs, frames, outlines = old_epochs[keep], old_frames[keep], old_outlines[keep]
    except RunError:
        pass  # none yet, or unreadable: start afresh
    atomic.write_npz(path, inputs=inputs, epochs=np.append(epochs, epoch),
                     frames=np.concatenate([frames, frame[None]]),
                     outlines=np.concatenate([outlines, lines[None]]))


def read_snapshots(run_dir):
    """(inputs, frames, outlines, epochs) from RUN/snapshots.npz; see ``record_snapshot``."""
    path = os.path.join(run_dir, 'snapshots.npz')
    try:
        with np.load(path, allow_pickle=False) as s:
            return s['inputs'], s['frames'], s['outlines'], s['epochs']
    except FileNotFoundError:
        raise RunError(f'{path} not found: train.py records the transformer\'s output on a fixed '
                       f'batch every epoch into it (runs trained before that have none). Train '
                       f'the run again, or pass the folder of a run that has one.') from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise RunError(f'{path} is unreadable ({e}): delete it; training writes it anew') from None


# ---- result.json (a Table 1 cell) -----------------------------------------------------

def write_result(run_dir, result):
    atomic.write_text(os.path.join(run_dir, 'result.json'), json.dumps(result, indent=2))


def read_result(run_dir):
    """The cell's result.json as a dict, or None if the cell has not finished."""
    path = os.path.join(run_dir, 'result.json')
    return read_json(path) if os.path.exists(path) else None

