"""What a run guarantees when things go wrong: kills and Ctrl-C at chosen moments, two runs
into one folder, --resume's rules, damaged resume state, bad --out, a full disk, bad seeds,
a diverging loss. Real short runs, so most need MNIST."""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from stngluon import engine
from stngluon import rundir
import train
from conftest import metrics
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--train-size', '300', '--batch-size', '50', '--epochs', '2']
SAME = ['epoch', 'train_loss', 'test_loss', 'test_acc', 'lr']

# Runs train.main and kills the process (os._exit, as SIGKILL would) right after a chosen
# file of the run folder has been written for a chosen epoch.
KILLER = '''
import os, sys
sys.path.insert(0, {root!r})
from stngluon import atomic
import train
target, epoch = sys.argv[1], int(sys.argv[2])
write_text = atomic.write_text
def killing_write_text(path, text):
    write_text(path, text)
    if os.path.basename(path) == target and (text.count('\\n') == epoch + 1 if target == 'metrics.csv'
                                             else json.loads(text).get('epoch') == epoch):
        os._exit(9)
import json
atomic.write_text = killing_write_text
train.main(sys.argv[3:])
'''


def run(out, *flags):
    train.main(['--data-dir', REAL_DIR, '--out', str(out), *TINY, *flags])


def resume(out, *flags):
    train.main(['--data-dir', REAL_DIR, '--out', str(out), '--resume', *flags])


def files(folder):
    """{name: bytes} of every file in ``folder``."""
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, name))}


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    """A finished 2-epoch run on 300 MNIST images (Gluon)."""
    if not os.path.isdir(REAL_DIR):
        pytest.skip('MNIST not available')
    out = tmp_path_factory.mktemp('finished')
    run(out)
    return out


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished run to damage."""
    out = tmp_path / 'run'
    shutil.copytree(finished, out)
    return out


# ---- kills, Ctrl-C, two runs ------------------------------------------------------------

@needs_mnist
@pytest.mark.parametrize('target', ['metrics.csv', 'checkpoint.json'])
def test_a_kill_while_an_epoch_is_recorded_loses_no_row_and_resume_repeats_the_run(
        finished, tmp_path, target):
    command = [sys.executable, '-c', KILLER.format(root=ROOT), target, '1',
               '--data-dir', REAL_DIR, '--out', str(tmp_path), *TINY]
    killed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr
    resume(tmp_path)   # no --epochs: the run's own 2, not the default 20
    assert [{k: r[k] for k in SAME} for r in metrics(tmp_path)] == \
           [{k: r[k] for k in SAME} for r in metrics(finished)]


@needs_mnist
def test_a_second_run_into_a_folder_in_use_stops_with_a_message_and_changes_nothing(copy):
    before = files(copy)
    with rundir.lock(str(copy)):
        with pytest.raises(SystemExit, match=r'is in use by another run \(pid \d+\)'):
            run(copy)
    assert files(copy) == before


@needs_mnist
def test_ctrl_c_during_the_export_is_reported_and_resume_exports(tmp_path, monkeypatch):
    def interrupted(self, prefix, epoch):
        open(prefix + '-0002.params', 'w').write('half')
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(engine.GluonModel, 'export', interrupted)
        with pytest.raises(SystemExit, match='interrupted while exporting; the checkpoint of epoch 2'):
            run(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(('model-', '.export'))]
    resume(tmp_path)
    assert (tmp_path / 'model-0002.params').is_file() and (tmp_path / 'model-symbol.json').is_file()
    assert len(metrics(tmp_path)) == 2


# ---- --resume's rules -------------------------------------------------------------------

@needs_mnist
def test_resume_may_extend_the_run_and_lower_its_rate_and_records_both(copy):
    resume(copy, '--epochs', '3', '--lr', '0.0002')
    rows = metrics(copy)
    assert [r['epoch'] for r in rows] == ['1', '2', '3'] and rows[-1]['lr'] == '0.0002'
    config = json.load(open(copy / 'config.json'))
    assert (config['epochs'], config['lr']) == (3, 0.0002)


@needs_mnist
def test_a_run_from_before_a_flag_existed_resumes_with_the_flags_default(copy):
    config = json.load(open(copy / 'config.json'))
    del config['input_norm'], config['per_channel']  # as train.py wrote it before those flags
    (copy / 'config.json').write_text(json.dumps(config))
    resume(copy, '--epochs', '3')                   # not "config.json lacks ['input_norm', ...]"
    assert [r['epoch'] for r in metrics(copy)] == ['1', '2', '3']


@needs_mnist
@pytest.mark.parametrize('flags, message', [
    (['--epochs', '1'], 'has trained 2 epochs already; --epochs 1 would not continue it'),
    (['--batch-size', '16'], r'--batch-size 16 \(the run has 50\)'),
    (['--transform', 'tps'], r'--transform tps \(the run has affine\)'),
])
def test_resume_refuses_what_would_change_the_run(copy, flags, message):
    before = files(copy)
    with pytest.raises(SystemExit, match=message):
        resume(copy, *flags)
    assert files(copy) == before


@needs_mnist
@pytest.mark.parametrize('key, value, message', [
    ('lr', -0.1, "--lr: -0.1 must be a finite number > 0"),
    ('transform', 'shear', "--transform: 'shear' is not one of none, affine"),
    ('seed', 10 ** 9, "--seed: 1000000000 must be between 0 and 999,999"),
    ('lr_steps', 'soon', "--lr-steps: 'soon' must be increasing epochs >= 1"),
])
def test_resume_checks_the_saved_settings_like_the_command_line(copy, key, value, message):
    config = json.load(open(copy / 'config.json'))
    (copy / 'config.json').write_text(json.dumps(dict(config, **{key: value})))
    before = files(copy)
    with pytest.raises(SystemExit, match=f'config.json holds a setting the command line would '
                                         f'reject: .*{message}'):
        resume(copy, '--epochs', '3')
    assert files(copy) == before


# ---- damaged resume state ---------------------------------------------------------------

def truncate(path):
    path.write_bytes(path.read_bytes()[:200])


@needs_mnist
@pytest.mark.parametrize('damage, message', [
    (lambda run: truncate(run / 'checkpoint-0002.params'), 'checkpoint-0002.params / .states cannot '
                                                           'be loaded.*the checkpoint is damaged'),
    (lambda run: truncate(run / 'checkpoint-0002.states'), 'checkpoint-0002.params / .states cannot'),
    (lambda run: (run / 'checkpoint-0002.states').unlink(), 'checkpoint-0002.states not found'),
    (lambda run: (run / 'config.json').unlink(), r'config.json is missing or lacks'),
    (lambda run: (run / 'config.json').write_text('{"api": '), 'config.json is not valid JSON'),
    (lambda run: (run / 'checkpoint.json').write_text('{"epoch": "two"}'),
     'checkpoint.json does not name a checkpoint'),
    (lambda run: (run / 'config.json').write_text(json.dumps(
        {k: v for k, v in json.load(open(run / 'config.json')).items() if k != 'dataset'})),
     r"lacks \['dataset'\]"),
    (lambda run: (run / 'metrics.csv').write_text(
        (run / 'metrics.csv').read_text().replace(',1,', ',one,', 1)), 'metrics.csv, line 2: malformed'),
], ids=['params', 'states', 'no-states', 'no-config', 'bad-config', 'bad-pointer', 'no-key',
        'bad-row'])
def test_damaged_resume_state_is_one_message_naming_the_file_and_nothing_is_overwritten(
        copy, damage, message):
    damage(copy)
    before = files(copy)
    with pytest.raises(SystemExit, match=message):
        resume(copy, '--epochs', '3')
    assert files(copy) == before


# ---- bad --out, a full disk -------------------------------------------------------------

def test_an_out_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / 'taken').write_text('notes')
    with pytest.raises(SystemExit, match='--out .*taken is a file, not a folder'):
        train.main(['--out', str(tmp_path / 'taken')])


@needs_mnist
@pytest.mark.parametrize('full', ['checkpoint-0002.states', 'export'])
def test_a_full_disk_stops_with_a_message_and_leaves_no_stray_file(tmp_path, monkeypatch, full):
    real_write = rundir.atomic.atomic_write

    def atomic_write(path, write):
        if os.path.basename(path) == full:
            raise OSError(errno.ENOSPC, 'No space left on device', path)
        return real_write(path, write)

    def export(self, prefix, epoch):
        open(prefix + '-symbol.json', 'w').write('{')
        raise OSError(errno.ENOSPC, 'No space left on device', prefix + '-0002.params')
    with monkeypatch.context() as patch:
        patch.setattr(rundir.atomic, 'atomic_write', atomic_write)
        patch.setattr(engine.GluonModel, 'export', export if full == 'export' else engine.GluonModel.export)
        with pytest.raises(SystemExit, match='No space left on device.*last complete checkpoint '
                                             r'\(epoch \d\) is kept.*--resume'):
            run(tmp_path)
    names = os.listdir(tmp_path)
    assert not [n for n in names if n.endswith('.tmp') or n.startswith(('.export', 'model-'))]
    done = rundir.checkpoint_epoch(str(tmp_path))
    assert {n for n in names if n.startswith('checkpoint-')} == {
        f'checkpoint-{done:04d}.params', f'checkpoint-{done:04d}.states'}
    resume(tmp_path)
    assert len(metrics(tmp_path)) == 2 and (tmp_path / 'model-0002.params').is_file()


# ---- bad values -------------------------------------------------------------------------

@pytest.mark.parametrize('flags, message', [
    (['--seed', '-1'], "--seed: '-1' must be between 0 and 999,999"),
    (['--seed', '5000000'], "--seed: '5000000' must be between 0 and 999,999"),
    (['--data-seed', '-1'], "--data-seed: '-1' must be between 0 and 2,147,483,647"),
])
def test_seeds_outside_their_range_are_refused_before_anything_is_written(flags, message, capsys,
                                                                           tmp_path):
    with pytest.raises(SystemExit):
        train.main([*flags, '--out', str(tmp_path / 'run')])
    assert message in capsys.readouterr().err and not (tmp_path / 'run').exists()


@needs_mnist
def test_the_symbol_api_with_a_batch_larger_than_the_training_set_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match='--batch-size 128 is larger than the 100 training images'):
        train.main(['--data-dir', REAL_DIR, '--out', str(tmp_path), '--api', 'symbol',
                    '--train-size', '100', '--batch-size', '128', '--epochs', '1'])


@needs_mnist
def test_a_diverging_loss_stops_the_run_like_a_nan(tmp_path):
    with pytest.raises(SystemExit, match=r'diverged to .* above 23.0.*checkpoint \(epoch 0\).*'
                                         r'--resume --lr 5'):
        run(tmp_path, '--lr', '50')
    assert metrics(tmp_path) == []


def test_the_divergence_guard_passes_a_learning_loss_and_stops_a_runaway_one():
    engine.check_loss(2.4, 1, 50)
    for loss in (float('nan'), float('inf'), 8.5e10, 30.0):
        with pytest.raises(engine.Diverged):
            engine.check_loss(loss, 1, 50)


def test_an_out_that_cannot_be_created_is_a_clear_error(tmp_path, monkeypatch):
    def read_only(path, exist_ok=False):
        raise PermissionError(13, 'Permission denied', path)
    monkeypatch.setattr(train.os, 'makedirs', read_only)
    with pytest.raises(SystemExit, match=r'error: .*run: Permission denied\. Nothing half-written'):
        train.main(['--out', str(tmp_path / 'run')])
