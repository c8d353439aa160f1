"""The run folder: what a training run writes, and how every script reads it back.

    RUN/config.json                   the run's flags and facts          write_config, read_config
    RUN/metrics.csv                   one row per epoch, METRICS          write_metrics, read_metrics
    RUN/checkpoint-NNNN.params/.states, checkpoint.json (the pointer)     save_epoch (with
                                                                          metrics.csv), checkpoint_epoch
    RUN/.lock                         held by the run writing the folder  lock, clean
    RUN/model-symbol.json, model-NNNN.params  the exported network        export, model_files
    RUN/snapshots.npz                 the transformer on 16 digits per epoch  record_snapshot, read_snapshots
    RUN/result.json                   a finished Table 1 cell (reproduce.py)  write_result, read_result
    RUN/compare.jpg, curves.png, stn_training.gif   pictures (visualize.py)

and the names of the transformer's nodes inside an exported symbol (TRANSFORMED, THETA,
GRIDS, GRID_CONSTANTS). Every write is atomic (temp file + rename). A missing or
unreadable file raises ``RunError`` with a message naming it and what to do. numpy
only, no MXNet: reproduce.py reads run folders without importing it.
"""
import contextlib
import csv
import fcntl
import glob
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile

import numpy as np

from stngluon import atomic
from stngluon.geometry import outlines_of

MAX_SEED = 999_999   # train.py's --seed: the per-epoch seed is seed * 1000 + epoch, below 2**32
METRICS = ['dataset', 'epoch', 'train_loss', 'test_loss', 'test_acc', 'lr', 'imgs_per_s', 'epoch_s']
SNAPSHOT_SIDE = 16   # segments per side of the outlines kept in snapshots.npz

# The transformer's outputs inside an exported symbol. net.Net's Gluon export (stn.py) and
# symbolic.py's sym.SpatialTransformer give them these names; the grid is GridGenerator's
# (affine, attention) or stn.py's 'grid' (projective, tps); sym.SpatialTransformer makes
# its grid inside the operator, so it has none (visualize.py rebuilds it from theta).
ONNX = 'model.onnx'   # export_onnx.py's file in a run folder, beside the MXNet export
ONNX_WEIGHTS = 'mxnet_params'   # its metadata key: the MXNet params file it was made from
GLUON_TRANSFORMED, SYMBOL_TRANSFORMED = 'net_stn_bilinearsampler0_output', 'net_stn_transformer_output'
TRANSFORMED = (GLUON_TRANSFORMED, SYMBOL_TRANSFORMED)
FEATURE_TRANSFORMED = 'net_stn_conv1_bilinearsampler0_output'   # net.Net's on a feature map
THETA = 'net_stn_regressor_fwd_output'
GRIDS = ('net_stn_gridgenerator0_output', 'net_stn_grid_output')
GRID_CONSTANTS = ('net_stn_target_grid', 'net_stn_tps_basis')   # stn.FAMILIES' constant_name
# The stages of net.Net's CNN without a transformer (--model cnn --no-stn): its two pooled
# conv stages and its logits, in order (colocalise.py's encoder).
CNN_STAGES = ('net_cnn_pool0_fwd_output', 'net_cnn_pool1_fwd_output', 'net_cnn_dense0_fwd_output')


def transformer_outputs(names):
    """The output node of each transformer among an exported symbol's internal ``names``,
    in order: the one of TRANSFORMED, or for net.ParallelTransformers PREFIX_stn0_...,
    PREFIX_stn1_... ([] without a transformer)."""
    single = [name for name in TRANSFORMED if name in names]
    if single:
        return single[:1]
    found = []
    while f'net_stn{len(found)}_bilinearsampler0_output' in names:
        found.append(f'net_stn{len(found)}_bilinearsampler0_output')
    return found


def step_outputs(names, transformed):
    """[(sampled, grid)] of a compositional transformer's steps before its output (stn.py's
    PREFIX_step{k}_bilinearsampler and PREFIX_step{k}_grid), k = 1, 2, ...: the input as each
    step's localisation net saw it and where it was read; [] for one step. ``transformed``
    is the transformer's output node among the exported symbol's internal ``names``."""
    prefix = transformed.rsplit('_', 2)[0] + '_'
    found = []
    while f'{prefix}step{len(found) + 1}_bilinearsampler_output' in names:
        k = len(found) + 1
        found.append((f'{prefix}step{k}_bilinearsampler_output', f'{prefix}step{k}_grid_output'))
    return found


def grid_names(transformed):
    """The candidate names of the sampling grid node of the transformer whose output node
    is ``transformed`` (GRIDS for the single one)."""
    prefix = transformed.rsplit('_', 2)[0] + '_'     # net_stn_, net_stn1_, net_stn_conv1_
    return tuple(prefix + name[len('net_stn_'):] for name in GRIDS)


class RunError(RuntimeError):
    """A file of a run folder is missing, unreadable or inconsistent (the message says which)."""


def reason(error):
    """The last line of an exception's text (MXNet's carry a C++ traceback before it)."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[-1] if lines else ""}'


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
    for line, row in enumerate(rows, 2):
        try:
            numbers = [float(row[k]) for k in METRICS[1:]]
        except (TypeError, ValueError):
            numbers = None
        if numbers is None or not all(map(math.isfinite, numbers)) or numbers[0] != line - 1:
            raise RunError(f'{path}, line {line}: malformed row {row}: expected epoch {line - 1} '
                           f'and finite numbers. Restore the file (or delete the bad rows after '
                           f'the checkpoint\'s epoch, which --resume recomputes)')
    return [row for row in rows if last_epoch is None or int(row['epoch']) <= last_epoch]


def column(rows, key):
    """One metrics column as a float array."""
    return np.array([float(row[key]) for row in rows])


def test_error(row):
    """The test error in % of a metrics.csv row (its test accuracy is a fraction)."""
    return 100 * (1 - float(row['test_acc']))


# ---- checkpoints ----------------------------------------------------------------------

def checkpoint_stem(run_dir, epoch):
    """RUN/checkpoint-NNNN: add .params (weights) or .states (optimizer state)."""
    return os.path.join(run_dir, f'checkpoint-{epoch:04d}')


def checkpoint_epoch(run_dir):
    """The epoch of the run's newest complete checkpoint, or None if it has none."""
    path = os.path.join(run_dir, 'checkpoint.json')
    if not os.path.exists(path):
        return None
    pointer = read_json(path)
    epoch = pointer.get('epoch') if isinstance(pointer, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise RunError(f'{path} does not name a checkpoint ({{"epoch": N}} expected): restore it '
                       f'(it names the newest checkpoint-NNNN.params), or start a new run')
    return epoch


def save_epoch(run_dir, epoch, rows, save_params, save_states):
    """Record a finished epoch: checkpoint-NNNN.{params,states} written with
    ``save_params(path)`` and ``save_states(path)``, metrics.csv with ``rows`` (its rows up
    to this epoch), then checkpoint.json pointed at the new checkpoint, and the older one
    deleted.

    The pointer moves last, so a kill at any moment leaves checkpoint.json naming a
    complete checkpoint whose epoch's row is in metrics.csv (a row of a later epoch is
    dropped and recomputed by --resume). If a write fails, the new checkpoint's files are
    removed and the older checkpoint stays in place.
    """
    stem, previous = checkpoint_stem(run_dir, epoch), checkpoint_epoch(run_dir)
    try:
        atomic.atomic_write(stem + '.params', save_params)
        atomic.atomic_write(stem + '.states', save_states)
        write_metrics(run_dir, rows)
        atomic.write_text(os.path.join(run_dir, 'checkpoint.json'), json.dumps({'epoch': epoch}))
    except BaseException:
        if checkpoint_epoch(run_dir) != epoch:   # the pointer never reached it
            remove_checkpoint(run_dir, epoch)
        raise
    if previous is not None and previous != epoch:
        remove_checkpoint(run_dir, previous)


def remove_checkpoint(run_dir, epoch):
    for ext in ('.params', '.states'):
        with contextlib.suppress(FileNotFoundError):
            os.remove(checkpoint_stem(run_dir, epoch) + ext)


# ---- owning the folder ----------------------------------------------------------------

@contextlib.contextmanager
def lock(run_dir):
    """Hold RUN/.lock (``fcntl.flock``, exclusive) while the block runs: a second run into
    the same folder gets a RunError naming the first one's process. The operating system
    releases the lock when its process ends, however it ends, so a crashed run's lock file
    is stale and the next run takes it."""
    path = os.path.join(run_dir, '.lock')
    handle = open(path, 'a+')
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or 'another process'
            raise RunError(f'{run_dir} is in use by another run ({owner}): wait for it to finish, '
                           f'or pass another --out') from None
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()}')
        handle.flush()
        yield
    finally:
        handle.close()


def clean(run_dir):
    """Remove what an interrupted run may have left: temp files (.*.tmp), temp export
    folders (.export*) and checkpoint files that checkpoint.json does not name.
    Call it while holding ``lock``."""
    named = checkpoint_epoch(run_dir)
    for path in glob.glob(os.path.join(run_dir, '.*.tmp')):
        os.remove(path)
    for path in glob.glob(os.path.join(run_dir, '.export*')):
        shutil.rmtree(path, ignore_errors=True)
    for path in glob.glob(os.path.join(run_dir, 'checkpoint-[0-9][0-9][0-9][0-9].*')):
        if named is None or not os.path.basename(path).startswith(f'checkpoint-{named:04d}.'):
            os.remove(path)


# ---- the exported network -------------------------------------------------------------

def export(run_dir, epoch, export_fn):
    """``export_fn(prefix, epoch)`` writes PREFIX-symbol.json and PREFIX-NNNN.params
    (``HybridBlock.export``'s layout) into a temp folder, then both are renamed to
    RUN/model-*; returns RUN/model."""
    tmp = tempfile.mkdtemp(dir=run_dir, prefix='.export')
    try:
        export_fn(os.path.join(tmp, 'model'), epoch)
        for name in sorted(os.listdir(tmp), key=lambda n: n.endswith('-symbol.json')):
            os.replace(os.path.join(tmp, name), os.path.join(run_dir, name))   # params first
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


def check_symbol(path):
    """RunError unless ``path`` holds an MXNet symbol graph with a 'data' input: a JSON object
    with nodes (each with op, name and inputs naming earlier nodes), arg_nodes and heads.
    MXNet itself crashes the interpreter on some valid JSON that is no graph (``{}``)."""
    graph = read_json(path)
    nodes = graph.get('nodes') if isinstance(graph, dict) else None

    def refs_ok(refs, limit):
        return isinstance(refs, list) and all(
            isinstance(r, list) and r and isinstance(r[0], int) and 0 <= r[0] < limit for r in refs)
    fine = (isinstance(nodes, list) and nodes and isinstance(graph.get('arg_nodes'), list)
            and all(isinstance(n, dict) and isinstance(n.get('op'), str)
                    and isinstance(n.get('name'), str) and refs_ok(n.get('inputs'), k)
                    for k, n in enumerate(nodes))
            and graph.get('heads') and refs_ok(graph['heads'], len(nodes))
            and any(n['name'] == 'data' and n['op'] == 'null' for n in nodes))
    if not fine:
        raise RunError(f'{path} is not an exported network (an MXNet symbol graph with a "data" '
                       f'input): export the run again, or pass the folder of a finished run')


def logits_of(symbol):
    """``symbol`` without its SoftmaxOutput loss (the symbolic API's), if it has one."""
    if symbol.name == 'softmax':
        return symbol.get_children()[0]
    return symbol


def load_export(model, epoch=None):
    """(symbol without a SoftmaxOutput loss, {name: NDArray} weights, symbol file, params
    file) of an export (``model_files``' rules), checked: a readable symbol graph, a
    readable parameter file, and every weight the symbol needs present. RunError otherwise."""
    from stngluon import compat  # noqa: F401  (before mxnet; imported here: reproduce.py needs no MXNet)
    import mxnet as mx
    from stngluon import ops
    symbol_file, params_file, _, _ = model_files(model, epoch)
    check_symbol(symbol_file)
    try:
        with open(symbol_file) as f:   # any operator of the library read as MXNet's own
            symbol = mx.sym.load_json(ops.portable(f.read()))
    except (mx.MXNetError, UnicodeDecodeError) as e:
        raise RunError(f'{symbol_file} is not a readable MXNet symbol ({reason(e)})') from None
    symbol = logits_of(symbol)
    try:
        saved = mx.nd.load(params_file)
    except mx.MXNetError as e:
        raise RunError(f'{params_file} is corrupt or not an MXNet parameter file ({reason(e)}): '
                       f'export the run again (python train.py --out RUN_DIR --resume)') from None
    weights = {k.split(':', 1)[-1]: v for k, v in saved.items()} if isinstance(saved, dict) else {}
    missing = [n for n in symbol.list_inputs() if n not in weights and n != 'data']
    if missing:
        raise RunError(f'{params_file} does not match {symbol_file}: it lacks {missing[:3]}')
    return symbol, weights, symbol_file, params_file


SIZES = [28, 42, 60] + list(range(8, 129))  # input sizes tried, the datasets' first


def input_shape(symbol, weights, run_dir=None):
    """(C, H, W) of the images an export's weights fit (``load_export``'s symbol and
    weights): the image_shape that RUN_DIR/config.json records, where it fits them; else
    tried, one channel (or two: MNIST addition), the datasets' sizes first, then 8 to 128
    pixels square."""
    import mxnet as mx
    try:
        recorded = read_config(run_dir).get('image_shape') if run_dir else None
    except RunError:
        recorded = None
    tried = [(c, s, s) for c in (1, 2) for s in SIZES]
    if isinstance(recorded, list) and len(recorded) == 3 and all(
            isinstance(n, int) and n > 0 for n in recorded):
        tried.insert(0, tuple(recorded))
    with contextlib.redirect_stdout(io.StringIO()):   # MXNet prints each failed inference
        for shape in tried:
            try:
                args, _, aux = symbol.infer_shape(data=(1, *shape))
            except mx.MXNetError:
                continue
            shapes = dict(zip(symbol.list_arguments(), args),
                          **dict(zip(symbol.list_auxiliary_states(), aux)))
            if all(tuple(shapes[n]) == weights[n].shape for n in shapes if n in weights):
                return shape
    raise RunError('the weights fit no square input of one or two channels and 8 to 128 pixels')


# ---- snapshots.npz --------------------------------------------------------------------

def to_uint8(images):
    return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)


def record_snapshot(run_dir, epoch, images, transformed, grid):
    """Store the transformer's output for a fixed batch after ``epoch`` in RUN/snapshots.npz.

    ``images`` (N, C, H, W) in [0, 1], e.g. test_x[:16] (16 images make a 4 x 4
    animation), and the transformer's ``transformed`` (N, C, H', W') and sampling ``grid``
    (N, 2, H', W') for them (stn.sampling_grid), numpy arrays; K transformers side by
    side give (N, K*C, H', W') and (N, 2K, H', W'). Epoch 0 is before training. The file
    holds inputs (N, C, H, W) uint8, frames (E, N, K*C, H', W') uint8, outlines (E, N, M, 2)
    or (E, K, N, M, 2) float32 (``geometry.outlines_of`` with per_side=SNAPSHOT_SIDE: M = 64
    for outputs of 17 pixels or more a side, about 8 KB per epoch for 16 images) and
    epochs (E,); frames of epochs >= ``epoch`` (a resumed run) and of another input
    batch are dropped. Written atomically.
    """
    inputs, frame = to_uint8(images), to_uint8(transformed)
    lines = outlines_of(grid, *images.shape[2:], per_side=SNAPSHOT_SIDE).astype(np.float32)
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


RESULT = {'cell': str, 'seed': int, 'schedule': str, 'test_error': (int, float),
          'epochs': int, 'train_seconds': (int, float), 'command': str}   # result.json's keys


def read_result(run_dir):
    """The cell's result.json as a dict, or None if the cell has not finished; RunError if
    it is not JSON or lacks a key of RESULT or holds a value of another type."""
    path = os.path.join(run_dir, 'result.json')
    if not os.path.exists(path):
        return None
    result = read_json(path)
    wrong = [key for key, kind in RESULT.items() if not isinstance(result, dict)
             or not isinstance(result.get(key), kind) or isinstance(result.get(key), bool)]
    if wrong:
        raise RunError(f'{path} is not a finished cell\'s result (expected a JSON object whose '
                       f'{", ".join(wrong)} hold {", ".join(kind_name(RESULT[k]) for k in wrong)}'
                       f'): delete it, and the next reproduce.py run writes it anew from the '
                       f'run\'s metrics.csv (or restore it)')
    return result


def kind_name(kind):
    return 'a number' if isinstance(kind, tuple) else {str: 'a string', int: 'a whole number'}[kind]

