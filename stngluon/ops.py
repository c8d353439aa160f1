"""The project's compiled operators: one external-operator library built from ops/*.cc.

MXNet loads operators from a shared library at run time (``mx.library.load``); the wheel
ships the headers to build one (``mxnet/include``, ``mxnet/src/lib_api.cc``). Ours holds

    stn_bilinear_sampler   BilinearSampler with the batch across OpenMP threads (sampler.py)
    stn_standardise        (x - mean) / std in one pass, for _minus_scalar and _div_scalar (net.py)
    stn_adam_update        adam_update for every parameter in one vectorised call (optim.py)
    stn_avg_pool2          Pooling over 2x2 windows, stride 2, average (net.AvgPool2x2)
    stn_input_dense        FullyConnected on the network's input, without the input's gradient
                           (net.InputDense, where runtime.py measured it faster)

the first four computing the same bits as the built-in operator they stand in for, the
last the same function (its sums in another order). ``portable`` gives an exported graph
MXNet's own operators in their place. ``make ops`` (or
``python -m stngluon.ops``) compiles it with g++; where it is missing, older than its
sources or fails to load, every caller uses MXNet's own operators, with the same results
(the FCN's first layer to the last bits).
"""
import glob
import json
import os
import subprocess
import sys

from stngluon import ROOT, atomic

SOURCES = sorted(glob.glob(os.path.join(ROOT, 'ops', '*.cc')))
HEADERS = sorted(glob.glob(os.path.join(ROOT, 'ops', '*.h')))
_loaded = None   # None: not tried yet; else whether the library is loaded


def library_path():
    """build/libstn_ops-mxnet<version>.so (a library is built for one MXNet), or
    $STN_OPS_LIBRARY."""
    if os.environ.get('STN_OPS_LIBRARY'):
        return os.path.abspath(os.environ['STN_OPS_LIBRARY'])
    from importlib.metadata import version
    return os.path.join(ROOT, 'build', f'libstn_ops-mxnet{version("mxnet")}.so')


def build(path=None, compiler='g++'):
    """Compile ops/*.cc into ``path`` (atomically). Raises RuntimeError with the compiler's
    message if it cannot. Without fused multiply-adds (-ffp-contract=off): each operator
    rounds as the built-in one does; the vectorised loops are compiled for AVX-512, AVX2
    and plain x86-64, and the CPU picks one when the library loads."""
    import mxnet
    path = path or library_path()
    include = os.path.join(os.path.dirname(mxnet.__file__), 'include')
    lib_api = os.path.join(os.path.dirname(mxnet.__file__), 'src', 'lib_api.cc')

    def compile_to(tmp):
        command = [compiler, '-std=c++11', '-O3', '-fopenmp', '-ffp-contract=off',
                   '-fno-math-errno', '-shared', '-fPIC', f'-I{include}',
                   f'-I{os.path.join(include, "mxnet")}', *SOURCES, lib_api, '-o', tmp]
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as e:
            raise RuntimeError(f'{compiler}: {e.strerror}') from None
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-2000:] or f'{compiler} failed')
    atomic.atomic_write(path, compile_to)
    return path


def fresh(path):
    """Whether the library at ``path`` exists and is newer than every source and header."""
    try:
        return os.path.getmtime(path) >= max(os.path.getmtime(s) for s in SOURCES + HEADERS)
    except OSError:
        return False


def load():
    """Load the library once per process; whether it is loaded. A library that is
    missing, older than its sources or fails to load is not used (no error)."""
    global _loaded
    if _loaded is None:
        _loaded = False
        path = library_path()
        if fresh(path):
            import mxnet as mx
            try:
                mx.library.load(path, verbose=False)
                _loaded = True
            except mx.base.MXNetError:
                pass
    return _loaded


# the library's operators a graph may hold -> MXNet's own operator that computes the same
BUILTIN = {'stn_bilinear_sampler': 'BilinearSampler',
           'stn_bilinear_sampler_grid_only': 'BilinearSampler',
           'stn_input_dense': 'FullyConnected',
           'stn_avg_pool2': 'Pooling'}
# the attributes of nn.AvgPool2D(2, 2)'s Pooling node, which stn_avg_pool2 computes as
AVG_POOL2 = {'count_include_pad': 'True', 'global_pool': 'False', 'kernel': '(2, 2)',
             'layout': 'NCHW', 'pad': '(0, 0)', 'pool_type': 'avg',
             'pooling_convention': 'valid', 'stride': '(2, 2)'}


def portable(symbol_json):
    """An exported graph (JSON text) with MXNet's own operators only: each threaded sampler
    named as ``BilinearSampler``, each ``stn_avg_pool2`` as nn.AvgPool2D(2, 2)'s ``Pooling``,
    each ``stn_input_dense`` as ``FullyConnected`` (and
    ``Activation`` where it has a ReLU: the same function, its sums in oneDNN's order), each
    ``stn_standardise`` node replaced by the
    ``_minus_scalar`` and ``_div_scalar`` nodes it computes as (the second keeps its name,
    so its output's name is unchanged), bit for bit."""
    graph = json.loads(symbol_json)
    rows = graph['node_row_ptr']
    nodes, where, row_ptr = [], [], [0]   # where[k]: node k's new index

    def add(node, outputs):
        nodes.append(node)
        row_ptr.append(row_ptr[-1] + outputs)

    for k, node in enumerate(graph['nodes']):
        node = dict(node, inputs=[[where[i], *rest] for i, *rest in node['inputs']])
        if node['op'] == 'stn_input_dense':
            attrs = node.get('attrs', {})
            node.update(op='FullyConnected', attrs={'num_hidden': attrs['num_hidden'],
                                                    'no_bias': 'False', 'flatten': 'True'})
            if attrs.get('act_type'):   # the layer's ReLU: an Activation node after it
                add(dict(node, name=node['name'] + '_dense'), 1)
                node = {'op': 'Activation', 'name': node['name'],
                        'attrs': {'act_type': attrs['act_type']},
                        'inputs': [[len(nodes) - 1, 0, 0]]}
        if node['op'] == 'stn_standardise':
            attrs = node.get('attrs', {})
            add({'op': '_minus_scalar', 'name': node['name'] + '_minus',
                 'attrs': {'scalar': attrs['mean']}, 'inputs': node['inputs']}, 1)
            node = {'op': '_div_scalar', 'name': node['name'],
                    'attrs': {'scalar': attrs['std']}, 'inputs': [[len(nodes) - 1, 0, 0]]}
        if node['op'] == 'stn_avg_pool2':
            node['attrs'] = dict(AVG_POOL2)
        node['op'] = BUILTIN.get(node['op'], node['op'])
        where.append(len(nodes))
        add(node, rows[k + 1] - rows[k])
    graph.update(nodes=nodes, node_row_ptr=row_ptr,
                 arg_nodes=[where[i] for i in graph['arg_nodes']],
                 heads=[[where[i], *rest] for i, *rest in graph['heads']])
    return json.dumps(graph, indent=2)


if __name__ == '__main__':
    if fresh(library_path()):
        sys.exit(0)
    try:
        print(f'built {build()}')
    except RuntimeError as e:
        sys.exit(f'error: could not build the operator library ({e}); training uses '
                 f'MXNet\'s own operators instead (the same results, slower)')
