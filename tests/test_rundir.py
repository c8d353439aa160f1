"""rundir.py: the one module that writes and reads a run folder."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from stngluon import rundir
import stn
from stngluon import symbolic
from net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export(folder, epoch, transform='affine'):
    net = Net(transform=transform)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    return rundir.export(str(folder), epoch, net.export)


def test_model_files_take_the_newest_export_of_a_folder_or_prefix(tmp_path):
    export(tmp_path, 9)
    export(tmp_path, 10)   # e.g. a run extended with --resume --epochs 10
    symbol, params, prefix, epoch = rundir.model_files(str(tmp_path))
    assert (params, epoch) == (str(tmp_path / 'model-0010.params'), 10)
    assert rundir.model_files(prefix, 9)[1] == str(tmp_path / 'model-0009.params')
    assert sorted(os.listdir(tmp_path)) == ['model-0009.params', 'model-0010.params',
                                            'model-symbol.json']   # no temp folder left


def test_missing_exports_name_the_file_and_what_to_do(tmp_path):
    with pytest.raises(rundir.RunError, match='model-symbol.json not found.*--resume'):
        rundir.model_files(str(tmp_path))
    export(tmp_path, 3)
    with pytest.raises(rundir.RunError, match='model-0004.params not found'):
        rundir.model_files(str(tmp_path), 4)
    os.remove(tmp_path / 'model-0003.params')
    with pytest.raises(rundir.RunError, match='model-NNNN.params not found'):
        rundir.model_files(str(tmp_path))


def test_a_failed_export_leaves_neither_files_nor_temporaries(tmp_path):
    def broken(prefix, epoch):
        open(prefix + '-symbol.json', 'w').write('{}')
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        rundir.export(str(tmp_path), 1, broken)
    assert os.listdir(tmp_path) == []


def test_metrics_round_trip_and_read_up_to_an_epoch(tmp_path):
    rows = [dict(dataset='r', epoch=e, train_loss=1 / e, test_loss=2 / e, test_acc=0.9, lr=0.001,
                 imgs_per_s=100, epoch_s=1.5) for e in (1, 2, 3)]
    rundir.write_metrics(str(tmp_path), rows)
    assert [r['epoch'] for r in rundir.read_metrics(str(tmp_path), 2)] == ['1', '2']
    np.testing.assert_allclose(rundir.column(rundir.read_metrics(str(tmp_path)), 'train_loss'),
                               [1, 0.5, 1 / 3])
    with pytest.raises(rundir.RunError, match='metrics.csv not found'):
        rundir.read_metrics(str(tmp_path / 'none'))


def row(epoch):
    return dict(dataset='r', epoch=epoch, train_loss=1 / epoch, test_loss=2 / epoch, test_acc=0.9,
                lr=0.001, imgs_per_s=100, epoch_s=1.5)


def test_an_epoch_is_recorded_checkpoint_and_metrics_together_replacing_the_older_one(tmp_path):
    def write(path):
        open(path, 'w').write('x')
    assert rundir.checkpoint_epoch(str(tmp_path)) is None
    rundir.save_epoch(str(tmp_path), 1, [row(1)], write, write)
    rundir.save_epoch(str(tmp_path), 2, [row(1), row(2)], write, write)
    assert rundir.checkpoint_epoch(str(tmp_path)) == 2
    assert len(rundir.read_metrics(str(tmp_path))) == 2
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-0002.params', 'checkpoint-0002.states',
                                            'checkpoint.json', 'metrics.csv']

    def fail(path):
        raise OSError(28, 'No space left on device')
    with pytest.raises(OSError):
        rundir.save_epoch(str(tmp_path), 3, [row(1), row(2), row(3)], write, fail)
    assert rundir.checkpoint_epoch(str(tmp_path)) == 2     # the older checkpoint stays, whole
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-0002.params', 'checkpoint-0002.states',
                                            'checkpoint.json', 'metrics.csv']   # nothing stray


def test_a_malformed_metrics_row_is_an_error_naming_the_file_and_line(tmp_path):
    rundir.write_metrics(str(tmp_path), [row(1), row(2)])
    text = (tmp_path / 'metrics.csv').read_text().replace('0.5,1.0', 'oops,1.0')
    (tmp_path / 'metrics.csv').write_text(text)
    with pytest.raises(rundir.RunError, match=r'metrics.csv, line 3: malformed row'):
        rundir.read_metrics(str(tmp_path))


def test_a_second_holder_of_the_folder_is_refused_and_a_dead_holders_lock_is_stale(tmp_path):
    with rundir.lock(str(tmp_path)):
        with pytest.raises(rundir.RunError, match=rf'in use by another run \(pid {os.getpid()}\)'):
            with rundir.lock(str(tmp_path)):
                pass
    code = 'import os; from stngluon import rundir\nwith rundir.lock(%r):\n    os._exit(9)' % str(tmp_path)
    assert subprocess.run([sys.executable, '-c', code], cwd=ROOT).returncode == 9   # crashed
    with rundir.lock(str(tmp_path)):   # its lock died with it
        pass


def test_clean_removes_what_an_interrupted_run_left_and_keeps_the_checkpoint(tmp_path):
    def write(path):
        open(path, 'w').write('x')
    rundir.save_epoch(str(tmp_path), 2, [row(1), row(2)], write, write)
    for stray in ['.checkpoint.jsonab12.tmp', 'checkpoint-0003.params', 'checkpoint-0001.states']:
        write(str(tmp_path / stray))
    (tmp_path / '.exportxyz').mkdir()
    write(str(tmp_path / '.exportxyz' / 'model-symbol.json'))
    rundir.clean(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-0002.params', 'checkpoint-0002.states',
                                            'checkpoint.json', 'metrics.csv']


@pytest.mark.parametrize('text', ['{"epoch": -1}', '{"epoch": "2"}', '[]', '{"epoch": 2'])
def test_a_damaged_checkpoint_pointer_is_an_error_naming_the_file(tmp_path, text):
    (tmp_path / 'checkpoint.json').write_text(text)
    with pytest.raises(rundir.RunError, match='checkpoint.json'):
        rundir.checkpoint_epoch(str(tmp_path))


@pytest.mark.parametrize('graph', ['{}', '{"nodes": []}', '[1, 2]', '"x"',
                                   '{"nodes": [{"op": "null", "name": "x", "inputs": []}], '
                                   '"arg_nodes": [0], "heads": [[0, 0, 0]]}',
                                   '{"nodes": [{"op": "null", "name": "data", "inputs": [[5, 0, 0]]}], '
                                   '"arg_nodes": [0], "heads": [[0, 0, 0]]}'])
def test_a_symbol_file_that_holds_no_network_is_refused_before_mxnet_reads_it(tmp_path, graph):
    export(tmp_path, 1)
    (tmp_path / 'model-symbol.json').write_text(graph)
    with pytest.raises(rundir.RunError, match='is not an exported network'):
        rundir.load_export(str(tmp_path))


def test_an_unreadable_config_is_an_error_naming_the_file(tmp_path):
    assert rundir.read_config(str(tmp_path)) == {}
    (tmp_path / 'config.json').write_text('{"epochs": 2')
    with pytest.raises(rundir.RunError, match='config.json is not valid JSON'):
        rundir.read_config(str(tmp_path))
    rundir.write_config(str(tmp_path), {'epochs': 2})
    assert json.load(open(tmp_path / 'config.json')) == {'epochs': 2}


@pytest.mark.parametrize('family', stn.TRANSFORMS)
def test_the_node_names_are_those_of_a_gluon_export_of_every_family(tmp_path, family):
    prefix = export(tmp_path, 1, family)
    names = mx.sym.load(prefix + '-symbol.json').get_internals().list_outputs()
    assert rundir.GLUON_TRANSFORMED in names and rundir.THETA in names
    assert len(set(rundir.GRIDS) & set(names)) == 1
    saved = {k.split(':', 1)[1] for k in mx.nd.load(prefix + '-0001.params')}
    constant = stn.FAMILIES[family].constant_name
    assert (saved & set(rundir.GRID_CONSTANTS)) == ({f'net_stn_{constant}'} if constant else set())


def test_the_node_names_are_those_of_the_symbolic_network():
    names = symbolic.get_symbol().get_internals().list_outputs()
    assert rundir.SYMBOL_TRANSFORMED in names and rundir.THETA in names


def test_an_unreadable_snapshot_file_is_an_error_and_is_replaced_by_the_next_record(tmp_path):
    (tmp_path / 'snapshots.npz').write_bytes(b'not a zip')
    with pytest.raises(rundir.RunError, match='snapshots.npz is unreadable'):
        rundir.read_snapshots(str(tmp_path))
    images = np.zeros((2, 1, 8, 8), np.float32)
    grid = stn.sampling_grid(np.tile(stn.identity_theta(), (2, 1)), 'affine', (8, 8))
    rundir.record_snapshot(str(tmp_path), 0, images, images, grid)
    assert rundir.read_snapshots(str(tmp_path))[3].tolist() == [0]


def test_a_gluon_export_loads_back_with_symbolblock_imports(tmp_path):
    prefix = export(tmp_path, 2)
    symbol, params, _, _ = rundir.model_files(str(tmp_path))
    net = gluon.SymbolBlock.imports(symbol, ['data'], params)
    assert net(mx.nd.zeros((1, 1, 28, 28))).shape == (1, 10) and prefix.endswith('model')
