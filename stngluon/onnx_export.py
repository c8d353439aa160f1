"""A run's network in ONNX, transformer included (export_onnx.py is its command).

MXNet 1.9.1's exporter (``mx.onnx.export_model``) has no converter for the operators a
spatial transformer is made of. This module registers them with that exporter
(``MXNetGraph.register``), for ONNX opset 16 and later, where ``GridSample`` exists:

    GridGenerator(theta, affine, target_shape=(H, W))   theta (N, 6) -> grid (N, 2, H, W):
        MatMul(theta as (N, 2, 3), [x_t; y_t; 1] (3, H*W)), x_t, y_t in [-1, 1]
    BilinearSampler(data, grid)                         grid (N, 2, H, W), x first ->
        GridSample(data, grid as (N, H, W, 2), align_corners=1, padding_mode=zeros)
    SpatialTransformer(data, loc)                       the two above (symbolic API)
    _greater_equal_scalar(x)                            GreaterOrEqual (projective grid)

MXNet's -1 and +1 are the centres of the corner pixels (align_corners=1) and samples
outside the image read zeros, as ONNX's GridSample with those settings. The model gets
a dynamic batch dimension and is checked with ``onnx.checker``.
"""
import json
import logging
import os

from stngluon import compat  # noqa: F401  (the numpy shim, before mxnet)
import mxnet as mx
import numpy as np
import onnx
from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
from mxnet.onnx.mx2onnx._op_translations._op_translations_opset12 import get_inputs
from onnx import helper

from stn import projective_constant
from stngluon import atomic, rundir

OPSET = 16   # GridSample's first opset


class ConversionError(RuntimeError):
    """The network holds an operator that cannot be converted to ONNX."""


def constant(name, array):
    return helper.make_node('Constant', [], [name], value=helper.make_tensor(
        name + '_value', onnx.TensorProto.FLOAT if array.dtype == np.float32
        else onnx.TensorProto.INT64, array.shape, array.flatten().tolist()))


def target_shape(attrs, node):
    shape = tuple(int(s) for s in attrs.get('target_shape', '()').strip('()[] ').split(',')
                  if s.strip())
    if len(shape) != 2 or min(shape) < 2:
        raise ConversionError(f'{node}: target_shape {attrs.get("target_shape")} is not an '
                              f'(H, W) of at least 2 x 2')
    return shape


def affine_grid_nodes(name, theta, shape):
    """theta (N, 6) -> ``name``: the grid (N, 2, H, W) of MXNet's GridGenerator(affine)."""
    h, w = shape
    target = projective_constant(shape).reshape(3, -1).astype(np.float32)   # (3, HW): x, y, 1
    return [
        constant(name + '_target', target),
        constant(name + '_theta_shape', np.array([-1, 2, 3], dtype=np.int64)),
        helper.make_node('Reshape', [theta, name + '_theta_shape'], [name + '_theta']),
        helper.make_node('MatMul', [name + '_theta', name + '_target'], [name + '_points']),
        constant(name + '_grid_shape', np.array([-1, 2, h, w], dtype=np.int64)),
        helper.make_node('Reshape', [name + '_points', name + '_grid_shape'], [name], name=name),
    ]


def sampler_nodes(name, data, grid, opset):
    """data (N, C, H, W), MXNet grid (N, 2, H', W') -> ``name``: GridSample's (N, C, H', W')."""
    return [
        helper.make_node('Transpose', [grid], [name + '_grid'], perm=[0, 2, 3, 1]),
        helper.make_node('GridSample', [data, name + '_grid'], [name], name=name,
                         align_corners=1, padding_mode='zeros',
                         mode='linear' if opset >= 20 else 'bilinear'),   # renamed in opset 20
    ]


@MXNetGraph.register('GridGenerator', OPSET)
def convert_grid_generator(node, **kwargs):
    name, inputs, attrs = get_inputs(node, kwargs)
    if attrs.get('transform_type', 'affine') != 'affine':
        raise ConversionError(f'{name}: GridGenerator transform_type='
                              f'{attrs.get("transform_type")} has no ONNX converter (affine has)')
    return affine_grid_nodes(name, inputs[0], target_shape(attrs, name))


@MXNetGraph.register('BilinearSampler', OPSET)
def convert_bilinear_sampler(node, **kwargs):
    name, inputs, _ = get_inputs(node, kwargs)
    return sampler_nodes(name, inputs[0], inputs[1], kwargs.get('opset_version', OPSET))


@MXNetGraph.register('SpatialTransformer', OPSET)
def convert_spatial_transformer(node, **kwargs):
    name, inputs, attrs = get_inputs(node, kwargs)
    if attrs.get('transform_type', 'affine') != 'affine' or \
            attrs.get('sampler_type', 'bilinear') != 'bilinear':
        raise ConversionError(f'{name}: SpatialTransformer converts with transform_type=affine '
                              f'and sampler_type=bilinear only')
    return (affine_grid_nodes(name + '_grid_out', inputs[1], target_shape(attrs, name))
            + sampler_nodes(name, inputs[0], name + '_grid_out', kwargs.get('opset_version', OPSET)))


@MXNetGraph.register('_greater_equal_scalar', OPSET)
def convert_greater_equal_scalar(node, **kwargs):
    name, inputs, attrs = get_inputs(node, kwargs)
    return [
        constant(name + '_scalar', np.array([float(attrs.get('scalar'))], dtype=np.float32)),
        helper.make_node('GreaterOrEqual', [inputs[0], name + '_scalar'], [name + '_ge']),
        helper.make_node('Cast', [name + '_ge'], [name], to=onnx.TensorProto.FLOAT, name=name),
    ]


def export(model, epoch=None, path=None):
    """Write the export of ``model`` (a run folder or file prefix, ``rundir.model_files``'
    rules) as ONNX to ``path`` (default RUN_DIR/model.onnx, beside the export), checked
    with ``onnx.checker``; returns the path. Outputs: 'logits' (N, classes) and, for a
    network with a transformer, 'transformed' (its output, N, C, H', W'; K transformers
    side by side: N, K*C, H', W'). The batch
    dimension is dynamic. ConversionError or rundir.RunError when it cannot be done."""
    symbol, weights, symbol_file, params_file = rundir.load_export(model, epoch)
    shape = rundir.input_shape(symbol, weights, os.path.dirname(symbol_file))
    internals = symbol.get_internals()
    names = internals.list_outputs()
    transformed = [internals[n] for n in rundir.transformer_outputs(names)]
    if len(transformed) > 1:   # net.ParallelTransformers: their outputs side by side
        transformed = [mx.sym.concat(*transformed, dim=1)]
    outputs = mx.sym.Group([symbol] + transformed)
    graph_json = json.loads(outputs.tojson())
    for node in graph_json['nodes']:   # MXNet's converter reads a missing flatten as False,
        if node['op'] == 'FullyConnected':   # though FullyConnected's default is True
            node.setdefault('attrs', {}).setdefault('flatten', 'True')
    outputs = mx.sym.load_json(json.dumps(graph_json))
    unknown = sorted({node['op'] for node in graph_json['nodes']
                      if node['op'] != 'null' and not any(
                          node['op'] in ops for ops in MXNetGraph.registry_.values())})
    if unknown:
        raise ConversionError(f'{symbol_file} holds operators that cannot be converted to ONNX: '
                              f'{", ".join(unknown)} (neither MXNet {mx.__version__}\'s exporter '
                              f'nor export_onnx.py has a converter for them)')
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)   # its warning about N-D dot does not apply to ours,
    try:                           # (N, 3, 3) x (3, P): MatMul broadcasts it the same way
        graph = MXNetGraph().create_onnx_graph_proto(
            outputs, weights, [(1, *shape)], [onnx.TensorProto.FLOAT], opset_version=OPSET,
            dynamic=True, dynamic_input_shapes=[(None, *shape)])
    finally:
        root.setLevel(level)
    named = dict(zip((n[:-len('_output')] for n in outputs.list_outputs()),
                     ['logits', 'transformed']))
    for output in list(graph.output):
        rename(graph, output.name, named[output.name])
    ordered = sorted(graph.output, key=lambda o: o.name != 'logits')   # logits first
    del graph.output[:]
    graph.output.extend(ordered)
    constants = {t.name for t in graph.initializer}   # weights are not inputs to feed
    kept = [i for i in graph.input if i.name not in constants]
    del graph.input[:]
    graph.input.extend(kept)
    onnx_model = helper.make_model(graph, producer_name='stn-gluon',
                                   opset_imports=[helper.make_opsetid('', OPSET)])
    helper.set_model_props(onnx_model, {rundir.ONNX_WEIGHTS: os.path.basename(params_file)})
    onnx.checker.check_model(onnx_model, full_check=True)
    path = path or os.path.join(os.path.dirname(symbol_file), rundir.ONNX)
    atomic.write_bytes(path, onnx_model.SerializeToString())
    return path


def rename(graph, old, new):
    """Rename tensor ``old`` to ``new`` everywhere in ``graph``."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
