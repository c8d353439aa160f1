"""Reproduce the paper's Table 1 (distorted MNIST): train the model x dataset grid.

    python reproduce.py                         # every cell, the published recipe, seeds 1-3
    python reproduce.py --cells 'rts/*' --seeds 1
    python reproduce.py --schedule ours         # the first pass: 5 epochs, fixed training sets
    python reproduce.py --cells 'r/st-cnn-*,r/cnn' --schedule paper --ctx 0
    python reproduce.py --scheduler tcp://HOST:8786   # on an existing Dask cluster
    python reproduce.py --table-only            # print the published table (results/table1)

Every cell (dataset, model, seed) is its own train.py run in
OUT/DATASET-MODEL-SCHEDULE-seedS/. A finished run leaves result.json there and is skipped
next time; an unfinished one is continued with --resume. So the grid can be
stopped at any moment and continued later, on this machine or another one that
gets a copy of OUT. After every cell OUT/table1.md and OUT/table1.csv are
rewritten: our test error (mean and spread over the seeds done) beside the
paper's, with the schedule and the time each cell took.

The cells are tasks of a Dask cluster: by default a LocalCluster of --jobs worker
processes on 127.0.0.1, or the cluster of --scheduler, whose workers must see OUT
and this repository at the same paths (a shared filesystem). A cell whose worker dies
is run again by the scheduler (Dask's allowed-failures, 3) and resumes from its last
epoch; a cell whose train.py fails (a bad flag, a diverged loss) is reported in the
tables with its error and not retried.
"""
import argparse
import contextlib
import csv
import ctypes
import fnmatch
import importlib.util
import io
import json
import logging
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import namedtuple

from stngluon import atomic, distort, mnist, rundir, runtime
from stngluon.config import as_flags

HERE = os.path.dirname(os.path.abspath(__file__))
CORES = len(os.sched_getaffinity(0))
CONNECT_TIMEOUT = 30   # seconds to reach a --scheduler

# The paper's Table 1: percentage test error (Jaderberg et al. 2015).
PAPER = {
    'fcn':          {'r': 2.1, 'rts': 5.2, 'p': 3.1, 'e': 3.2, 'tc': 13.2},
    'cnn':          {'r': 1.2, 'rts': 0.8, 'p': 1.5, 'e': 1.4, 'tc': 3.5},
    'st-fcn-aff':   {'r': 1.2, 'rts': 0.8, 'p': 1.5, 'e': 2.7, 'tc': 2.0},
    'st-fcn-proj':  {'r': 1.3, 'rts': 0.9, 'p': 1.4, 'e': 2.6},
    'st-fcn-tps':   {'r': 1.1, 'rts': 0.8, 'p': 1.4, 'e': 2.4},
    'st-cnn-aff':   {'r': 0.7, 'rts': 0.5, 'p': 0.8, 'e': 1.2, 'tc': 1.7},
    'st-cnn-proj':  {'r': 0.8, 'rts': 0.6, 'p': 0.8, 'e': 1.3},
    'st-cnn-tps':   {'r': 0.7, 'rts': 0.5, 'p': 0.8, 'e': 1.1},
}
PAPER_COLUMNS = ['r', 'rts', 'p', 'e', 'tc']   # Table 1's columns, in its order
TRAIN_IMAGES = mnist.TRAIN_IMAGES   # every set's: MNIST's 60,000
FAMILY_ABBREVIATIONS = {'aff': 'affine', 'proj': 'projective', 'tps': 'tps'}

# The schedules: the first pass's ('ours', 5 epochs), the paper's (150k iterations of
# batch 256 = 640 epochs of 60,000 images, SGD, learning rate 0.01 divided by 10 every 50k
# iterations); for the recipe pilots, ours with a cosine decay after half an epoch of
# warm-up, and the paper's optimizer (SGD with momentum, batch 256) over our length; and
# the published Table 1's recipe, 'table1' (the default). Each is train.py's settings
# (config.RunConfig fields), in the order the tables print them.
SCHEDULES = {
    'ours': dict(optimizer='adam', lr=0.001, batch_size=64, epochs=5, lr_steps=[3, 4]),
    'paper': dict(optimizer='sgd', lr=0.01, momentum=0.9, batch_size=256, epochs=640,
                  lr_steps=[213, 427]),
    'cosine': dict(optimizer='adam', lr=0.001, batch_size=64, epochs=5, lr_mode='cosine',
                   warmup_epochs=0.5),
    'sgd': dict(optimizer='sgd', lr=0.01, momentum=0.9, batch_size=256, epochs=5, lr_steps=[3, 4]),
}
# The recipe the pilots chose: the cosine schedule over 20 epochs, new training distortions
# every epoch, the localisation nets at the classifier's rate. Folder names spell out what
# it changes of the schedule it grew from ('cosine-20ep-fresh-loc1'), as the pilots did.
SCHEDULES['table1'] = dict(SCHEDULES['cosine'], epochs=20, fresh_distortions=True, loc_lr_mult=1.0)
# The IC-STN code's recipe (Lin & Lucey 2017, its MNIST defaults; docs/icstn.md): plain SGD,
# batch 100, 0.01 for the classifier and 1e-4 for the geometric predictor, no decay,
# 500k iterations (833 epochs), new perturbations for every batch.
SCHEDULES['icstn'] = dict(optimizer='sgd', lr=0.01, momentum=0.0, batch_size=100, epochs=833,
                          lr_steps=[], fresh_distortions=True, loc_lr_mult=0.01)
NAMED_AFTER = {'table1': 'cosine'}
# What every cell trains with unless the command line changes it (CHANGES): float32, so that
# a table's rows and a cell's seeds compare across hosts (train.py's --precision auto would
# put the CNN baselines alone in bfloat16 on CPUs with AVX-512 bf16).
GRID = {'precision': 'float32'}
DEFAULT_OUT, PUBLISHED = os.path.join('result', 'table1'), os.path.join('results', 'table1')


def positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number >= 1')
    return int(text)


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f'{text!r} must be a finite number > 0')
    return value


# What the command line may change of a schedule (besides --epochs and --fresh-distortions):
# the setting, its tag in folder names ('ours-b256' with --batch-size 256), its type and help.
CHANGES = {
    'batch_size': ('b', positive_int, "the schedule's batch size, if not its own"),
    'lr': ('lr', positive_float, "the schedule's base learning rate, if not its own"),
    'loc_lr_mult': ('loc', positive_float, "train.py's localisation learning-rate multiplier, "
                                           "if not 0.1"),
    'budget_mult': ('budget', positive_float, "train.py's multiple of each experiment's parameter "
                                              "budget (the FCN and CNN widths), if not 1"),
    'input_norm': ('norm', str, "train.py's --input-norm (none), if not mnist"),
    'precision': ('', str, "train.py's --precision (bfloat16), if not float32 (the grid's, on "
                           "every host)"),
    'train_size': ('n', positive_int, 'train every cell on the first N training images (quick '
                                      'checks)'),
}


class Cell(namedtuple('Cell', 'dataset model')):
    """A cell of the grid, named 'DATASET/MODEL' ('rts/st-cnn-tps'): a distorted set (a
    column of Table 1, or another reading of one: 'p-forward') and a model (a row)."""

    @classmethod
    def named(cls, name):
        return cls(*name.split('/'))

    @property
    def column(self):
        return column(self.dataset)

    @property
    def paper_error(self):
        return PAPER[self.model][self.column]

    @property
    def baseline(self):
        """The model without its transformer: 'cnn' for 'st-cnn-aff' (None for a baseline)."""
        return self.model.split('-')[1] if self.model.startswith('st-') else None

    @property
    def settings(self):
        """train.py's dataset, model and transform."""
        if self.baseline:
            return dict(dataset=self.dataset, model=self.baseline,
                        transform=FAMILY_ABBREVIATIONS[self.model.split('-')[2]])
        return dict(dataset=self.dataset, model=self.model, transform='none')


def schedule(name, epochs=None):
    """The settings of schedule ``name``; ``epochs`` shortens or lengthens it, with the
    learning-rate steps kept at the same fractions of the run (those that fall on or
    after the last epoch dropped)."""
    settings = dict(SCHEDULES[name])
    if epochs is not None:
        scale = epochs / settings['epochs']
        settings['epochs'] = epochs
        if 'lr_steps' in settings:
            steps = sorted({max(1, round(s * scale)) for s in settings['lr_steps']})
            settings['lr_steps'] = [s for s in steps if s < epochs]
    return settings


def recipe(args):
    """The schedule's settings with the command line's changes: a changed setting's value
    replaces the schedule's (batch_size 256 instead of its 64), new ones follow."""
    settings = schedule(args.schedule, args.epochs)
    if args.fresh_distortions:
        settings['fresh_distortions'] = True
    settings.update({k: getattr(args, k) for k in CHANGES if getattr(args, k, None) is not None})
    return settings


def cells(readings=False):
    """Every (dataset, model) of Table 1 as 'dataset/model' names, in the paper's order;
    with ``readings``, also the other readings of a column's set (distort.py's 'p-forward',
    ...) under each of the column's models."""
    names = [f'{d}/{m}' for d in PAPER_COLUMNS for m in PAPER if d in PAPER[m]]
    if readings:
        names += [f'{d}/{m}' for d in distort.DATASETS if column(d) != d
                  for m in PAPER if column(d) in PAPER[m]]
    return names


def column(dataset):
    """The Table 1 column of a set: 'p' for 'p' and for its readings 'p-forward', ..."""
    return dataset.split('-')[0]


def choose(patterns):
    """The cells matched by any of ``patterns``; a set's other readings only by a pattern
    whose dataset part is not '*' (so '*' and '*/cnn' stay on the grid)."""
    return [c for c in cells(readings=True) if any(
        fnmatch.fnmatch(c, pat) and (Cell.named(c).column == Cell.named(c).dataset
                                     or pat.split('/')[0] != '*') for pat in patterns)]


def label(args):
    """The schedule's name in folders and tables: the schedule ('ours'; 'table1' is named
    after 'cosine'), then what the run changes of it: '-20ep' for 20 epochs, '-fresh' for
    new distortions every epoch, and a tag per changed setting (CHANGES): '-b256' for
    batch 256, '-lr0.003', '-loc1', '-budget2', '-normnone', '-bfloat16', '-n2000'. So the
    published recipe is 'cosine-20ep-fresh-loc1', and 'table1' with --epochs 40
    'cosine-40ep-fresh-loc1'."""
    base = NAMED_AFTER.get(args.schedule, args.schedule)
    own, settings = SCHEDULES[base], recipe(args)
    name = base if settings['epochs'] == own['epochs'] else f'{base}-{settings["epochs"]}ep'
    name += '-fresh' if settings.get('fresh_distortions') else ''
    for key, (tag, _, _) in CHANGES.items():
        value = settings.get(key)
        if value is not None and value != own.get(key):
            name += f'-{tag}{value:g}' if isinstance(value, float) else f'-{tag}{value}'
    return name


def cell_settings(cell, run):
    """train.py's settings for ``cell`` under the recipe ``run`` (``recipe``): the cell's
    network and set, the grid's float32 (GRID) unless the recipe changes it, the recipe."""
    return {**Cell.named(cell).settings, **GRID, **run}


def run_dir(args, cell, seed):
    """OUT/DATASET-MODEL-SCHEDULE-seedS, SCHEDULE as ``label`` names it."""
    return os.path.join(args.out, f'{cell.replace("/", "-")}-{label(args)}-seed{seed}')


class CellFailed(RuntimeError):
    """A cell's train.py ended with an error (not retried: running it again would fail again)."""


def die_with_parent():
    """In the child before train.py starts: end it when the process that started it dies
    (a killed Dask worker), so that it does not train on, holding its run folder."""
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def run_cell(cell, seed, args):
    """Train one cell to the end (continuing an interrupted run) and save its result.json.
    Runs on a Dask worker; raises CellFailed if train.py fails."""
    folder = run_dir(args, cell, seed)
    command = [sys.executable, os.path.join(HERE, 'train.py'),
               *as_flags({**cell_settings(cell, recipe(args)), 'seed': seed}),
               '--out', folder, '--ctx', args.ctx]
    if args.data_dir:
        command += ['--data-dir', args.data_dir]
    rerun = shlex.join(['python', 'train.py'] + command[2:])   # result.json: the whole run
    if rundir.checkpoint_epoch(folder) is not None:
        command.append('--resume')
    os.makedirs(folder, exist_ok=True)
    threads = args.threads or max(1, CORES // worker_threads())
    env = runtime.with_threads(os.environ, threads)
    log_path = os.path.join(folder, 'train.log')
    with open(log_path, 'a') as log:
        log.write(f'$ {shlex.join(command)}\n')
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               preexec_fn=die_with_parent)
    if code != 0:
        with open(log_path) as log:
            last = ([line.strip() for line in log if line.strip()] or [''])[-1]
        raise CellFailed(f'train.py exit {code}: {last} (see {log_path})')
    rows = rundir.read_metrics(folder)
    result = {'cell': cell, 'seed': seed, 'schedule': label(args),
              'test_error': round(rundir.test_error(rows[-1]), 2),
              'epochs': len(rows), 'train_seconds': round(sum(float(r['epoch_s']) for r in rows)),
              'command': rerun}
    rundir.write_result(folder, result)
    return result


def worker_threads():
    """The task threads of the Dask worker running this (cells it trains at once), else 1."""
    try:
        from distributed import get_worker
        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return 1


def seeds_in(args):
    """The seeds of the schedule's runs in OUT (folders named ...-LABEL-seedS)."""
    pattern = re.compile(rf'-{re.escape(label(args))}-seed(\d+)$')
    try:
        names = os.listdir(args.out)
    except OSError:
        return set()
    return {int(m.group(1)) for m in map(pattern.search, names) if m}


def write_tables(args, failed=None):
    """OUT/table1.csv and OUT/table1.md from every result.json of the schedule found in OUT
    (the seeds asked for and any others there: adding seed 4 keeps seeds 1-3 in the
    tables), with the cells of ``failed`` ({(cell, seed): error}) marked and their errors
    listed."""
    out, failed = args.out, failed or {}
    seeds = sorted(set(args.seeds) | seeds_in(args))
    rows, finished, folders = [], set(), {}
    found = [c for c in cells(readings=True)[len(cells()):]
             if any(rundir.read_result(run_dir(args, c, s)) for s in seeds)]
    core_seconds = 0
    for cell in cells() + found:
        results = [r for r in (rundir.read_result(run_dir(args, cell, s)) for s in seeds) if r]
        core_seconds += sum(r['train_seconds'] * threads(run_dir(args, cell, r['seed']))
                            for r in results)
        errors = [r['test_error'] for r in results]
        finished.update(r['seed'] for r in results)
        named = Cell.named(cell)
        if results:
            folders[named] = run_dir(args, cell, results[0]['seed'])
        rows.append({
            'dataset': named.dataset, 'model': named.model, 'paper_error': named.paper_error,
            'our_error': round(statistics.mean(errors), 2) if errors else '',
            'spread': round(statistics.stdev(errors), 2) if len(errors) > 1 else '',
            'seeds': len(errors), 'minutes': round(sum(r['train_seconds'] for r in results) / 60, 1)
            if results else '', 'failed': sum(c == cell for c, _ in failed)})
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]), lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(os.path.join(out, 'table1.csv'), text.getvalue())

    columns = PAPER_COLUMNS + list(dict.fromkeys(Cell.named(c).dataset for c in found))
    flags = ' '.join(as_flags(recipe(args)))
    waiting = ','.join(str(s) for s in seeds if s not in finished)
    seeds_done = ','.join(map(str, seeds)) + (
        f' (no cell has finished seed {waiting} yet)' if waiting else '')
    lines = [f'Test error in %: ours (the paper\'s). Schedule `{label(args)}`: `{flags}`; '
             f'seeds {seeds_done}.', '',
             *error_table(rows, columns, lambda c: os.path.relpath(folders[c], out)), '',
             *goal_lines(rows),
             '', 'Minutes of training per cell (all seeds):', '',
             '| model | ' + ' | '.join(d.upper() for d in columns) + ' |',
             '|---|' + '---|' * len(columns)]
    for model in PAPER:
        times = [next((str(r['minutes']) for r in rows if r['model'] == model
                       and r['dataset'] == d), '') for d in columns]
        lines.append(f'| {model_name(model)} | ' + ' | '.join(times) + ' |')
    runs = sum(r['seeds'] for r in rows)
    lines += ['', f'{runs} runs, {sum(r["minutes"] or 0 for r in rows) / 60:.1f} hours of '
                  f'training, {core_seconds / 3600:.1f} CPU-core hours (training time x OpenMP '
                  f'threads; data loading and evaluation not counted).']
    if getattr(args, 'against', None):
        lines += ['', *paired_lines(args, cells() + found, seeds)]
    if failed:
        lines += ['', 'Failed (fix the cause and run reproduce.py again to continue them):', '']
        lines += [f'- {cell} seed {seed}: {error}' for (cell, seed), error in sorted(failed.items())]
    atomic.write_text(os.path.join(out, 'table1.md'), '\n'.join(lines) + '\n')
    def published(readme):   # the table and its tally, linked from ``readme``'s folder
        where = os.path.dirname(os.path.abspath(readme))
        return [*error_table(rows, columns, lambda c: os.path.relpath(folders[c], where)), '',
                *goal_lines(rows)]
    if getattr(args, 'readme', None):
        replace_block(args.readme, published(args.readme))
    if args.table_only:
        print('\n'.join(published(args.readme or os.path.join(HERE, 'README.md'))))


def paired_lines(args, names, seeds):
    """The markdown lines comparing this schedule's runs, seed by seed, with the same cells
    and seeds in --against DIR trained without the command line's changes (CHANGES): there
    the published recipe's 'cosine-20ep-fresh-loc1', here its '-bfloat16'. The same seed
    starts from the same weights and data, so a change that moves every pair the same way is
    a bias, however small against the spread between seeds."""
    plain = argparse.Namespace(**{**vars(args), **dict.fromkeys(CHANGES), 'out': args.against})
    pairs = []
    for cell in names:
        for seed in seeds:
            here, there = (rundir.read_result(run_dir(a, cell, seed)) for a in (args, plain))
            if here and there:   # the difference as the table prints it, for the tally too
                pairs.append((cell, seed, there['test_error'], here['test_error'],
                              round(here['test_error'] - there['test_error'], 2)))
    where = os.path.relpath(args.against, args.out)
    lines = [f'Seed by seed against the same cells in {where} trained without this schedule\'s '
             f'changes (`{label(plain)}`), test error in %:', '']
    if not pairs:
        return lines + ['(no cell and seed finished in both)']
    lines += [f'| cell | seed | `{label(plain)}` | `{label(args)}` | difference |',
              '|---|---|---|---|---|']
    lines += [f'| {cell} | {seed} | {there:.2f} | {here:.2f} | {difference:+.2f} |'
              for cell, seed, there, here, difference in pairs]
    differences = [pair[-1] for pair in pairs]
    lines += ['', f'Higher in {sum(d > 0 for d in differences)} of {len(pairs)} pairs, '
                  f'lower in {sum(d < 0 for d in differences)}; mean difference '
                  f'{statistics.mean(differences):+.2f} points.', '']
    for model in dict.fromkeys(Cell.named(pair[0]).model for pair in pairs):
        own = [pair[-1] for pair in pairs if Cell.named(pair[0]).model == model]
        error = (f' (standard error {statistics.stdev(own) / math.sqrt(len(own)):.2f})'
                 if len(own) > 1 else '')
        lines.append(f'- {model}: higher in {sum(d > 0 for d in own)} of {len(own)}, lower in '
                     f'{sum(d < 0 for d in own)}; mean difference '
                     f'{statistics.mean(own):+.2f} points{error}.')
    return lines


def error_table(rows, columns, link=None):
    """The markdown lines of Table 1: per model a row, per column 'ours ± spread (paper)'
    ('-' where no seed has finished, 'failed' where a cell failed); with ``link``, 'ours'
    links to ``link(Cell)``, the folder of the cell's first finished seed."""
    def cell_text(model, dataset):
        row = next((r for r in rows if r['model'] == model and r['dataset'] == dataset), None)
        if row is None:
            return ''
        ours = '-' if row['our_error'] == '' else f'{row["our_error"]:.2f}'
        if row['spread'] != '':
            ours += f' ± {row["spread"]:.2f}'
        if row['failed']:
            ours = 'failed' if ours == '-' else f'{ours}, {row["failed"]} failed'
        if link and row['our_error'] != '':
            ours = f'[{ours}]({link(Cell(dataset, model))})'
        return f'{ours} ({row["paper_error"]})'

    lines = ['| model | ' + ' | '.join(d.upper() for d in columns) + ' |',
             '|---|' + '---|' * len(columns)]
    return lines + [f'| {model_name(model)} | ' + ' | '.join(cell_text(model, d) for d in columns)
                    + ' |' for model in PAPER]


def model_name(model):
    """The paper's name of a model: 'st-cnn-aff' -> 'ST-CNN affine'."""
    *family, transform = model.split('-')
    if transform in FAMILY_ABBREVIATIONS:
        return ('-'.join(family).upper() + ' '
                + {'tps': 'TPS'}.get(transform, FAMILY_ABBREVIATIONS[transform]))
    return model.upper()


def goal_lines(rows):
    """Where the table stands against the grid's goal: cells within max(0.3 points, 25% of
    the paper's figure) of the paper, and cells with three seeds; ST-CNN cells within 0.3
    points of the paper (either way; and how many are at most 0.3 above it, a cell below
    the paper counting as there), and every ST model below its own baseline (ST-CNN < CNN,
    ST-FCN < FCN) by more than the spread between seeds (the larger of the two; where only
    one side has several seeds, its spread stands for both)."""
    done = {(r['dataset'], r['model']): r for r in rows if r['our_error'] != ''}
    st_cnn = [r for (d, m), r in done.items() if m.startswith('st-cnn')]
    def gap(r):   # in hundredths, as the table shows them: 1.0 against 0.7 is 0.3 above
        return round(r['our_error'] - r['paper_error'], 2)
    near = [r for r in done.values() if abs(gap(r)) <= max(0.3, round(0.25 * r['paper_error'], 2))]
    seeded_thrice = [r for r in done.values() if r['seeds'] >= 3]
    close = [r for r in st_cnn if abs(gap(r)) <= 0.3]
    not_above = [r for r in st_cnn if gap(r) <= 0.3]
    pairs = [(r, done[d, Cell(d, m).baseline]) for (d, m), r in done.items()
             if (d, Cell(d, m).baseline) in done]
    below = [(st, base) for st, base in pairs if st['our_error'] < base['our_error']]
    seeded = [(st, base) for st, base in pairs if st['spread'] != '' or base['spread'] != '']
    clear = [(st, base) for st, base in seeded if base['our_error'] - st['our_error']
             > max(s for s in (st['spread'], base['spread']) if s != '')]
    lines = [f'- Cells within max(0.3 points, 25% of the paper\'s figure) of the paper: '
             f'{len(near)} of {len(done)}; with three seeds: {len(seeded_thrice)} of {len(done)}.',
             f'- ST-CNN cells within 0.3 points of the paper: {len(close)} of {len(st_cnn)}; '
             f'at most 0.3 points above it (or below it): {len(not_above)} of {len(st_cnn)}.',
             f'- ST models below their baseline (ST-CNN < CNN, ST-FCN < FCN): {len(below)} of '
             f'{len(pairs)}; by more than the larger spread between seeds: {len(clear)} of the '
             f'{len(seeded)} with several seeds on either side.']
    against = [f'{model_name(st["model"])} on {st["dataset"].upper()}' for st, base in pairs
               if (st, base) not in below]
    if against:
        lines.append(f'- Not below their baseline: {", ".join(against)}.')
    return lines


def markers(name):
    """The lines around a generated block of a page: '<!-- NAME: start -->', '<!-- NAME: end -->'."""
    return f'<!-- {name}: start -->', f'<!-- {name}: end -->'


def readme_parts(path, name='table1'):
    """The text of ``path`` before its block ``name``'s start line and after its end line;
    a one-line error (SystemExit) if it cannot be read or lacks them."""
    first, last = markers(name)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise SystemExit(f'error: cannot read --readme {path}: {e.strerror}')
    if text.count(first) != 1 or text.count(last) != 1 or text.index(first) > text.index(last):
        raise SystemExit(f'error: {path} needs one "{first}" line and, after it, one '
                         f'"{last}" line around the table that --readme rewrites')
    head, rest = text.split(first)
    return head, rest.split(last)[1]


def replace_block(path, lines, name='table1'):
    """Put ``lines`` between block ``name``'s start and end lines of ``path`` (atomically)."""
    head, tail = readme_parts(path, name)
    atomic.write_text(path, head + '\n'.join([markers(name)[0], *lines, markers(name)[1]]) + tail)


# The paper's other MNIST experiments, as the README's table shows them: (experiment, model,
# run folder under results/, the paper's test error in % or None). Test error is the last
# epoch's; a run stopped early says so.
APPENDIX = [
    ('addition', 'FCN', 'addition/fcn-ours-seed1', 47.7),
    ('addition', 'FCN', 'addition/fcn-cosine-60ep-fresh-seed1', 47.7),
    ('addition', 'CNN', 'addition/cnn-cosine-20ep-fresh-seed1', 14.7),
    ('addition', 'ST-FCN affine', 'addition/st-fcn-aff-ours-loc1-seed1', 18.5),
    ('addition', 'ST-CNN affine', 'addition/st-cnn-aff-cosine-20ep-fresh-loc1-seed1', None),
    ('addition', '2xST-FCN affine, both on both channels', 'addition/2st-fcn-aff-ours-loc1-seed1', 5.8),
    ('addition', '2xST-FCN affine, one per channel', 'addition/2st-fcn-aff-perchannel-cosine-60ep-fresh-seed1', 5.8),
    ('addition', '2xST-FCN affine, one per channel', 'addition/2st-fcn-aff-perchannel-cosine-60ep-fresh-loc1-seed1', 5.8),
    ('addition', '2xST-CNN affine, both on both channels', 'addition/2st-cnn-aff-cosine-20ep-fresh-loc1-seed1', None),
    ('addition', '2xST-CNN affine, one per channel', 'addition/2st-cnn-aff-perchannel-cosine-20ep-fresh-loc1-seed1', None),
    ('RTS', 'ST-CNN affine, on the input', 'pilots/rts-st-cnn-aff-ours-fresh-loc1-seed1', None),
    ('RTS', 'ST-CNN affine, on the input and on conv1', 'inside/rts-st-cnn-aff-multi-ours-fresh-loc1-seed1', None),
]
# Co-localisation (scripts/colocalise.py): (canvases and method, run folder, the paper's share).
COLOCALISATION = [
    ('translated, our curriculum', 'coloc/translated', '100%'),
    ('cluttered, our curriculum', 'coloc/cluttered', '75-93%'),
    ('cluttered, our curriculum with sharp negatives', 'coloc/cluttered-sharpneg', '75-93%'),
]


# Beyond the paper, compositional transformers (docs/icstn.md): (set, model, run folders under
# results/ less their '-seedN'). Every seed there counts; all trained with the Table 1 recipe.
COMPOSITIONAL = [
    ('perturbed', 'CNN', 'icstn/perturbed-cnn'),
    ('perturbed', 'ST-CNN projective (= c-STN-1, IC-STN-1)', 'icstn/perturbed-st-cnn-proj'),
    ('perturbed', 'c-STN-2 projective', 'icstn/perturbed-c-stn-2-proj'),
    ('perturbed', 'c-STN-4 projective', 'icstn/perturbed-c-stn-4-proj'),
    ('perturbed', 'IC-STN-2 projective', 'icstn/perturbed-ic-stn-2-proj'),
    ('perturbed', 'IC-STN-4 projective', 'icstn/perturbed-ic-stn-4-proj'),
    ('P', 'ST-CNN projective', 'table1/p-st-cnn-proj-cosine-20ep-fresh-loc1'),
    ('P', 'IC-STN-4 projective', 'icstn/p-ic-stn-4-proj'),
    ('RTS', 'ST-CNN projective', 'table1/rts-st-cnn-proj-cosine-20ep-fresh-loc1'),
    ('RTS', 'IC-STN-4 projective', 'icstn/rts-ic-stn-4-proj'),
    ('perturbed, FCN', 'FCN', 'icstn/perturbed-fcn'),
    ('perturbed, FCN', 'ST-FCN projective', 'icstn/perturbed-st-fcn-proj'),
    ('perturbed, FCN', 'c-STN-4 projective + FCN', 'icstn/perturbed-c-stn-4-fcn-proj'),
    ('perturbed, FCN', 'IC-STN-2 projective + FCN', 'icstn/perturbed-ic-stn-2-fcn-proj'),
    ('perturbed, FCN', 'IC-STN-4 projective + FCN', 'icstn/perturbed-ic-stn-4-fcn-proj'),
]


def role(model):
    """A COMPOSITIONAL model's column in the README's table: 'no ST' (CNN, FCN), 'ST' (the
    single transformer: ST-CNN, ST-FCN), or its first word ('c-STN-2', 'IC-STN-4', ...)."""
    kind = model.split()[0]
    return {'CNN': 'no ST', 'FCN': 'no ST', 'ST-CNN': 'ST', 'ST-FCN': 'ST'}.get(kind, kind)


def finished_seeds(stem):
    """{seed: (test error in %, config)} of the finished runs STEM-seedN (every epoch of
    their config.json in metrics.csv)."""
    found = {}
    parent, name = os.path.split(stem)
    for folder in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        match = re.fullmatch(re.escape(name) + r'-seed(\d+)', folder)
        path = os.path.join(parent, folder)
        if not match or not os.path.exists(os.path.join(path, 'metrics.csv')):
            continue
        config, rows = rundir.read_config(path), rundir.read_metrics(path)
        if rows and len(rows) == config.get('epochs'):
            found[int(match.group(1))] = (rundir.test_error(rows[-1]), config)
    return found


def mean_and_spread(errors):
    """'0.62 ± 0.04' (the sample standard deviation; just the mean for one seed)."""
    spread = f' ± {statistics.stdev(errors):.2f}' if len(errors) > 1 else ''
    return f'{statistics.mean(errors):.2f}{spread}'


def compositional_runs():
    """(set, model, run folder stem, ``finished_seeds``) of each row of COMPOSITIONAL."""
    return [(dataset, model, stem, finished_seeds(stem)) for dataset, model, stem in
            ((d, m, os.path.join(HERE, 'results', s)) for d, m, s in COMPOSITIONAL)]


def compositional_table(where=HERE, rows=None):
    """The markdown lines of the compositional-transformer table from the committed runs
    (``rows``: ``compositional_runs()``, read if not given): per model its parameters and
    test error, mean +- std over the finished seeds (each linked, relative to ``where``)."""
    rows = rows or compositional_runs()
    lines = ['| set | model | parameters | test error (%), mean ± std | seeds |',
             '|---|---|---|---|---|']
    for dataset, model, stem, runs in rows:
        if not runs:
            lines.append(f'| {dataset} | {model} | | not run yet | |')
            continue
        errors = [error for error, _ in runs.values()]
        seeds = ', '.join(f'[{error:.2f}]({os.path.relpath(f"{stem}-seed{seed}", where)})'
                          for seed, (error, _) in sorted(runs.items()))
        params = next(iter(runs.values()))[1].get('num_params')
        lines.append(f'| {dataset} | {model} | {params:,d} | **{mean_and_spread(errors)}** | '
                     f'{seeds} |')
    return lines + [''] + compositional_comparison(rows)


def compositional_comparison(rows):
    """Markdown lines comparing each compositional model of a set with that set's single
    transformer, ``role`` 'ST' (``rows`` as ``compositional_runs()`` gives them), where both
    have two seeds or more: the difference of the mean test errors, the larger of the two
    seed spreads (sample standard deviations), whether the model is below by more than
    that spread, and whether every one of its seeds is below every seed of the single one."""
    errors = {(dataset, role(model)): [e for e, _ in runs.values()]
              for dataset, model, _, runs in rows}
    lines = ['| set | model | against the single ST (points) | larger seed spread | '
             'below by more than the spread | every seed below every single-ST seed |',
             '|---|---|---|---|---|---|']
    yes_no = {True: 'yes', False: 'no'}
    for (dataset, kind), ours in errors.items():
        reference = errors.get((dataset, 'ST'), [])
        if kind in ('no ST', 'ST') or len(ours) < 2 or len(reference) < 2:
            continue
        difference = statistics.mean(ours) - statistics.mean(reference)
        spread = max(statistics.stdev(ours), statistics.stdev(reference))
        lines.append(f'| {dataset} | {kind} | {difference:+.2f} | {spread:.2f} | '
                     f'{yes_no[difference < -spread]} | {yes_no[max(ours) < min(reference)]} |')
    return lines


def compositional_summary(rows=None):
    """The README's short form of ``compositional_table`` (``rows`` likewise): a row per set,
    a column per ``role`` of model ('no ST', 'ST', 'c-STN-2', ..., 'IC-STN-4'),
    'mean ± std (seeds)'."""
    kinds, sets, cells = [], [], {}
    for dataset, model, _, runs in rows or compositional_runs():
        kind = role(model)
        kinds += [kind] if kind not in kinds else []
        sets += [dataset] if dataset not in sets else []
        errors = [e for e, _ in runs.values()]
        cells[dataset, kind] = f'{mean_and_spread(errors)} ({len(errors)})' if errors else ''
    return [f'| set | {" | ".join(kinds)} |', '|---' * (len(kinds) + 1) + '|'] + [
        f'| {d} | {" | ".join(cells.get((d, k), "") for k in kinds)} |' for d in sets]


def training_text(config, epochs_done):
    """A run's schedule in a few words: '5 epochs, steps at 3, 4' or '38 of 60 epochs,
    cosine', the images seen, fresh distortions, the localisation's rate multiplier."""
    epochs = config['epochs']
    text = f'{epochs} epochs' if epochs_done == epochs else f'{epochs_done} of {epochs} epochs'
    text += (', cosine' if config['lr_mode'] == 'cosine'
             else ', steps at ' + ', '.join(map(str, config['lr_steps'])))
    text += f' ({epochs_done * config["train_images"] / 1e6:.2g}M images)'
    text += ', fresh' if config.get('fresh_distortions') else ''
    return text + (f', loc x{config["loc_lr_mult"]:g}' if config['transform'] != 'none' else '')


def appendix_tables(where=HERE):
    """The markdown lines of the appendix experiments' tables from the committed runs in
    results/, each figure linked to its run folder relative to ``where``."""
    results = os.path.join(HERE, 'results')
    lines = ['| experiment | model | training | test error | paper |', '|---|---|---|---|---|']
    for experiment, model, folder, paper in APPENDIX:
        path = os.path.join(results, folder)
        config, rows = rundir.read_config(path), rundir.read_metrics(path)
        error = rundir.test_error(rows[-1])
        lines.append(f'| {experiment} | {model} | {training_text(config, len(rows))} | '
                     f'[{error:.2f}%]({os.path.relpath(path, where)}) | '
                     f'{"" if paper is None else f"{paper}%"} |')
    lines += ['', '| co-localisation: canvases, method | classes | crops with IoU > 0.5 | paper |',
              '|---|---|---|---|']
    for method, folder, paper in COLOCALISATION:
        path = os.path.join(results, folder)
        with open(os.path.join(path, 'result.json')) as f:
            result = json.load(f)
        lines.append(f'| {method} | {len(result["per_class"])} | '
                     f'[{100 * result["mean"]:.1f}%]({os.path.relpath(path, where)}) | {paper} |')
    return lines


def threads(folder):
    """The OpenMP threads a run trained with (config.json; 1 if it does not say)."""
    try:
        return rundir.read_config(folder).get('omp_threads') or 1
    except rundir.RunError:
        return 1


def write_grid_curves(out, chosen, path):
    """Test error (%) against training images seen, one panel per cell of ``chosen`` and
    one line per finished run of it in ``out`` (every schedule and seed with a result.json,
    as in the tables), into ``path``. Returns {cell: [run names]}, what was drawn."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    runs = {}
    for folder in sorted(os.listdir(out)):
        cell = next((c for c in chosen if folder.startswith(c.replace('/', '-') + '-')), None)
        if cell is None or rundir.read_result(os.path.join(out, folder)) is None:
            continue
        rows = rundir.read_metrics(os.path.join(out, folder))
        images = rundir.read_config(os.path.join(out, folder)).get('train_images')
        if not isinstance(images, int) or images < 1:
            raise rundir.RunError(f'{os.path.join(out, folder, "config.json")} does not say how '
                                  f'many images the run trained on ("train_images"): restore it '
                                  f'from the run, or leave --curves out')
        name = folder[len(cell.replace('/', '-')) + 1:]
        runs.setdefault(cell, []).append((name, [int(r['epoch']) * images / 1e6 for r in rows],
                                          [rundir.test_error(r) for r in rows]))
    runs = {cell: runs[cell] for cell in chosen if cell in runs}   # the grid's order
    cols = min(len(runs), 2) or 1
    panel_rows = (len(runs) + cols - 1) // cols or 1
    fig, axes = plt.subplots(panel_rows, cols, squeeze=False, figsize=(6 * cols, 4 * panel_rows))
    for ax, (cell, lines) in zip(axes.flat, runs.items()):
        for name, seen, error in lines:
            ax.plot(seen, error, marker='.', label=name)
        named = Cell.named(cell)
        ax.axhline(named.paper_error, color='k', linestyle='--', label='paper')
        ax.set(title=f'{named.dataset.upper()} {model_name(named.model)}', yscale='log',
               xlabel='training images seen (millions)', ylabel='test error (%)')
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
        ax.legend(fontsize='small')
    fig.tight_layout()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=90))
    plt.close(fig)
    return {cell: [name for name, _, _ in lines] for cell, lines in runs.items()}


def seed_list(text):
    try:
        seeds = [int(s) for s in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a comma-separated list of seeds')
    if not all(0 <= s <= rundir.MAX_SEED for s in seeds):
        raise argparse.ArgumentTypeError(f'{text!r}: seeds are whole numbers from 0 to '
                                         f'{rundir.MAX_SEED:,d}')
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f'{text!r} names a seed twice: each seed is one run')
    return seeds


def scheduler_address(text):
    """--scheduler: tcp://HOST:PORT, Dask's address form."""
    match = re.fullmatch(r'tcp://([^/:\s]+):(\d+)', text)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise argparse.ArgumentTypeError(f'{text!r} is not a Dask scheduler address: use '
                                         f'tcp://HOST:PORT with a port from 1 to 65535, as '
                                         f'"dask scheduler" prints it')
    return text


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--cells', default='*',
                   help='comma-separated patterns over DATASET/MODEL names, e.g. "rts/*,r/cnn"; '
                        'the other readings of the P set (p-5px, p-forward, p-box, ...) only by '
                        'name, e.g. "p-*/cnn"')
    p.add_argument('--seeds', type=seed_list, default=[1, 2, 3],
                   help='seeds of every cell (the paper reports the mean of three runs)')
    p.add_argument('--schedule', choices=list(SCHEDULES), default='table1',
                   help='table1: the published recipe (Adam, cosine decay over 20 epochs, new '
                        'distortions every epoch, --loc-lr-mult 1); ours: the first pass (5 '
                        'epochs, steps at 3 and 4, fixed training sets); cosine and sgd: 5-epoch '
                        'pilots; paper: the paper\'s 150k SGD iterations')
    p.add_argument('--epochs', type=positive_int, default=None,
                   help="the schedule's length in epochs, if not its own (its learning-rate "
                        "steps scale along; runs go to folders named SCHEDULE-Nep)")
    p.add_argument('--fresh-distortions', action='store_true',
                   help='distort the training digits anew every epoch (train.py\'s flag), '
                        'as training for as long as the paper needs')
    p.add_argument('--out', default=None, metavar='DIR',
                   help='where the cell folders, table1.md and table1.csv go (default: '
                        f'{DEFAULT_OUT}; with --table-only, {PUBLISHED}, the committed runs)')
    p.add_argument('--data-dir', default=None)
    p.add_argument('--ctx', default='cpu')
    p.add_argument('--table-only', action='store_true',
                   help='train nothing: rewrite the tables from the finished cells and print Table 1')
    p.add_argument('--readme', metavar='MD',
                   help='also rewrite the table between the "<!-- table1: start -->" and '
                        '"<!-- table1: end -->" lines of this file (the README)')
    p.add_argument('--appendix', action='store_true',
                   help='train nothing: print the table of the paper\'s other MNIST experiments '
                        'from the committed runs in results/ (with --readme, rewrite it between '
                        'the "<!-- appendix: start -->" and "<!-- appendix: end -->" lines)')
    p.add_argument('--compositional', action='store_true',
                   help='train nothing: rewrite the table of the compositional transformers '
                        '(IC-STN, c-STN) in docs/icstn.md from the committed runs in results/ '
                        'and print it (with --readme, also its short form between the '
                        '"<!-- compositional: start -->" and "<!-- compositional: end -->" lines '
                        'of that file)')
    p.add_argument('--against', default=None, metavar='DIR',
                   help='also compare the runs, seed by seed, with the same cells and seeds in '
                        'DIR trained without this command\'s changes of the schedule '
                        '(--precision, --budget-mult, ...): e.g. --precision bfloat16 --out '
                        f'results/precision --against {PUBLISHED}')
    p.add_argument('--curves', default=None, metavar='PNG',
                   help='also draw test error against images seen for every run of the chosen '
                        'cells found in --out (one line per schedule) into this file')
    for key, (tag, kind, text) in CHANGES.items():
        p.add_argument('--' + key.replace('_', '-'), type=kind, default=None,
                       choices={'input_norm': ['none'], 'precision': ['bfloat16']}.get(key),
                       help=f'{text} (folders SCHEDULE-{tag}VALUE)')
    p.add_argument('--jobs', type=positive_int, default=CORES,
                   help='cells trained at once: the local Dask cluster\'s workers (default: one '
                        'per core; benchmarks/bench_train.py --side-by-side: 1.15x the images/s of one cell '
                        'on all cores for the RTS ST-CNN, 1.01x to 1.47x across the workloads)')
    p.add_argument('--threads', type=positive_int, default=None,
                   help='OpenMP threads per cell (default: the cores divided among the jobs; '
                        'with --scheduler, a worker machine\'s cores divided among its task '
                        'threads)')
    p.add_argument('--estimate', action='store_true',
                   help='train nothing: time each network of the chosen cells for a few seconds '
                        'here (--jobs at once, --threads each, as the grid runs them) and print '
                        'what the grid would take, in hours and core-hours (training steps '
                        'only: testing each epoch and drawing fresh distortions come on top)')
    p.add_argument('--scheduler', type=scheduler_address, default=None, metavar='tcp://HOST:PORT',
                   help='run the cells on this Dask scheduler\'s workers (they must see --out '
                        'and this repository at the same paths) instead of a local cluster')
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.appendix:
        readme = args.readme or os.path.join(HERE, 'README.md')   # links as the README has them
        lines = appendix_tables(os.path.dirname(os.path.abspath(readme)))
        if args.readme:
            replace_block(args.readme, lines, 'appendix')
        return print('\n'.join(lines))
    if args.compositional:
        page, runs = os.path.join(HERE, 'docs', 'icstn.md'), compositional_runs()
        lines = compositional_table(os.path.dirname(page), runs)
        replace_block(page, lines, 'compositional')
        if args.readme:
            replace_block(args.readme, compositional_summary(runs), 'compositional')
        return print('\n'.join(lines))
    if args.out is None:
        args.out = os.path.join(HERE, PUBLISHED) if args.table_only else DEFAULT_OUT
    chosen = choose(args.cells.split(','))
    if not chosen:
        p.error(f'--cells {args.cells!r} matches none of: {", ".join(cells())}')
    if args.estimate:
        return estimate(args, chosen)
    try:
        reproduce(args, chosen)
    except rundir.RunError as e:
        sys.exit(f'error: {e}')


def estimate(args, chosen, seconds=6.0):
    """Print what training ``chosen`` x ``args.seeds`` would take here, and return the
    projected core-hours: each distinct network (model, family, input size) timed in
    train.py's own loop (``runtime.loop_rate``, with the execution settings train.py would
    choose) for about ``seconds``, --jobs copies at once on --threads threads each, as the
    grid runs its cells; times the images each cell sees (its epochs x training images)."""
    from concurrent.futures import ThreadPoolExecutor
    environ = dict(os.environ)   # as given, before runtime.configure() adds to it
    threads = args.threads or max(1, CORES // args.jobs)
    run = recipe(args)
    images = run['epochs'] * (args.train_size or TRAIN_IMAGES)
    networks = {}   # (input shape, model flags) -> its cells
    for cell in chosen:
        named = Cell.named(cell)
        model = as_flags({k: v for k, v in named.settings.items() if k != 'dataset'})
        networks.setdefault((distort.image_shape(named.dataset), tuple(model)), []).append(cell)
    from importlib.metadata import version
    cpu_model, isa = runtime.cpu()
    print(f'host: {cpu_model} ({", ".join(isa)}), {CORES} usable cores; MXNet {version("mxnet")}')
    print(f'{len(chosen)} cells x {len(args.seeds)} seeds, {images:,d} training images each '
          f'({label(args)}), {args.jobs} at a time on {threads} thread(s) each; timing each '
          f'network for {seconds:g} s:')
    print(f'{"network":44s} {"cells":>5s} {"images/s":>9s} {"h per cell":>10s}')
    cell_hours = 0.0
    for (shape, model), members in networks.items():
        cell_flags = as_flags(cell_settings(members[0], run))
        settings = runtime.chosen_for(cell_flags, threads, environ)
        measure = runtime.measure_in_child(cell_flags, seconds, threads)
        with ThreadPoolExecutor(args.jobs) as pool:
            rates = list(pool.map(lambda _: measure(settings), range(args.jobs)))
        if min(rates) <= 0:
            sys.exit(f'error: {" ".join(cell_flags)} could not be timed here')
        rate = statistics.median(rates)
        hours = images / rate / 3600
        cell_hours += hours * len(members) * len(args.seeds)
        name = f'{" ".join(model)} at {shape[1]}x{shape[2]}'
        print(f'{name:44s} {len(members):5d} {rate:9,.0f} {hours:10.2f}', flush=True)
    core_hours = cell_hours * threads
    print(f'the grid: {cell_hours / args.jobs:.1f} hours on this machine, '
          f'{core_hours:.1f} core-hours')
    return core_hours


def check_writable(args):
    """Before hours of training, not after: --out is (or can be made) a folder, and the
    folder of --curves and the --readme file are there to write."""
    if args.readme:
        readme_parts(args.readme)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise rundir.RunError(f'--out {args.out} is a file, not a folder: pass a folder')
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise rundir.RunError(f'--out {args.out} cannot be made a folder ({e.strerror}): pass '
                              f'a folder you can write') from None
    if args.curves:
        folder = os.path.dirname(os.path.abspath(args.curves))
        if not (os.path.isdir(folder) and os.access(folder, os.W_OK)) \
                or os.path.isdir(args.curves):
            raise rundir.RunError(f'--curves {args.curves}: cannot write a picture there (its '
                                  f'folder is missing or read-only, or it is a folder): pass a '
                                  f'file in a folder you can write')


def reproduce(args, chosen):
    """Train what is missing of ``chosen`` x ``args.seeds`` (none with --table-only), then
    write the tables (and curves); one grid at a time per --out."""
    check_writable(args)
    with contextlib.ExitStack() as hold:
        if not args.table_only:
            hold.enter_context(rundir.lock(args.out))   # a second grid here says so
        todo = [] if args.table_only else [(cell, seed) for cell in chosen for seed in args.seeds
                                           if rundir.read_result(run_dir(args, cell, seed)) is None]
        failed, interrupted = {}, False
        try:
            failed = run_grid(todo, args) if todo else {}
        except KeyboardInterrupt:
            interrupted = True
        write_tables(args, failed)   # with every cell that finished, also during Ctrl-C
    if interrupted:
        sys.exit(f'\ninterrupted: {os.path.join(args.out, "table1.md")} lists the cells that '
                 f'finished; the same command continues the rest, each from its last epoch')
    print(f'wrote {os.path.join(args.out, "table1.md")} and table1.csv')
    if args.curves:
        try:
            drawn = write_grid_curves(args.out, chosen, args.curves)
        except OSError as e:
            raise rundir.RunError(f'--curves {args.curves}: {e.strerror or e}') from None
        print(f'wrote {args.curves}: ' + ('; '.join(f'{cell} ({", ".join(names)})'
                                                    for cell, names in drawn.items())
                                          or 'no finished runs of the chosen cells'))
    if failed:
        sys.exit(f'error: {len(failed)} of {len(todo)} cells failed (listed in table1.md)')


def local_cluster(jobs):
    """A Dask LocalCluster of ``jobs`` worker processes, one cell each, listening on
    127.0.0.1 only (its dashboard too, when bokeh is installed)."""
    from distributed import LocalCluster
    dashboard = '127.0.0.1:0' if importlib.util.find_spec('bokeh') else None
    # Its processes (and the train.py they start) ignore Ctrl-C: this process alone
    # answers it, with one line, and closing the cluster stops them (PR_SET_PDEATHSIG).
    default = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                            host='127.0.0.1', dashboard_address=dashboard,
                            silence_logs=logging.ERROR)
    finally:
        signal.signal(signal.SIGINT, default)


def run_grid(todo, args):
    """Train the (cell, seed) pairs of ``todo`` as tasks of a Dask cluster, rewriting the
    tables after each; returns {(cell, seed): error} of those that failed."""
    if args.scheduler:
        cluster, where = None, f'the Dask cluster at {args.scheduler}'
    else:
        args.threads = args.threads or max(1, CORES // args.jobs)
        cluster = local_cluster(args.jobs)
        where = f'a local Dask cluster of {args.jobs} workers, {args.threads} threads each'
    try:
        return submit(todo, args, cluster, where)
    finally:
        if cluster:
            cluster.close()


def connect(client_class, address, timeout=None):
    """A Dask client of ``address``, within ``timeout`` seconds: Client's own timeout bounds
    reaching the port, not a handshake that something other than Dask never answers."""
    made, timeout = {}, timeout or CONNECT_TIMEOUT

    def attempt():
        try:
            made['client'] = client_class(address, timeout=timeout)
        except Exception as e:
            made['error'] = e
    thread = threading.Thread(target=attempt, daemon=True, name='connect')
    thread.start()
    thread.join(timeout + 5)
    if 'error' in made:
        raise made['error']
    if 'client' not in made:
        raise TimeoutError(f'no Dask handshake within {timeout} s')
    return made['client']


def submit(todo, args, cluster, where):
    from distributed import Client, KilledWorker, as_completed
    failed, done, start = {}, 0, time.time()
    try:
        client = connect(Client, args.scheduler or cluster)
    except Exception as e:   # refused, timed out, or something else answering there
        raise SystemExit(f'error: cannot reach a Dask scheduler at {args.scheduler} '
                         f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else "no answer"}'
                         f'): start one (dask scheduler) or check --scheduler') from None
    with client:
        link = f', dashboard {client.dashboard_link}' if cluster and cluster.dashboard_link else ''
        print(f'{len(todo)} cells to train on {where}{link}', flush=True)
        # Cells go to the scheduler one per free worker thread, the rest are held here: a
        # Dask scheduler may queue every task on one worker and leave the others idle.
        pending, futures = list(todo), {}
        finished = as_completed()

        def fill():
            threads = sum(w['nthreads'] for w in client.scheduler_info()['workers'].values())
            while pending and sum(not f.done() for f in futures) < max(1, threads):
                cell, seed = pending.pop(0)
                future = client.submit(run_cell, cell, seed, args, pure=False,
                                       key=f'{cell}-seed{seed}-{label(args)}')
                futures[future] = (cell, seed)
                finished.add(future)

        fill()
        for future in finished:
            (cell, seed), done = futures[future], done + 1
            try:
                result = future.result()
                outcome = (f'{result["test_error"]:.2f}% test error (paper '
                           f'{Cell.named(cell).paper_error}%), {result["train_seconds"] / 60:.1f} min')
            except CellFailed as e:
                failed[cell, seed] = outcome = str(e)
            except KilledWorker:
                failed[cell, seed] = outcome = (
                    f'its Dask worker died every time it ran it (allowed-failures); see '
                    f'{os.path.join(run_dir(args, cell, seed), "train.log")}')
            fill()
            running = sum(not f.done() for f in futures)
            print(f'[{done}/{len(todo)} done, {running} running, {len(pending)} waiting, '
                  f'{(time.time() - start) / 60:.1f} min] {cell} seed {seed}: {outcome}', flush=True)
            write_tables(args, failed)
    return failed


if __name__ == '__main__':
    main()
