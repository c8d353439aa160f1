"""The paper's models in net.py (FCN, CNN, ST-FCN, ST-CNN with every transformer family),
their parameter budgets, and train.py's --model / --transform / --summary flags."""
import json
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import net
import stn as stn_module
import train
from stngluon.config import RunConfig
from net import Net
from test_mnist import REAL_DIR, needs_mnist

TRANSFORMS = ['none', 'affine', 'attention', 'projective', 'tps']


def images(n=2, size=28, seed=0, channels=1):
    return mx.nd.array(np.random.RandomState(seed).rand(n, channels, size, size).astype(np.float32))


def built(size=28, channels=1, **kwargs):
    model = Net(**kwargs)
    model.initialize(mx.init.Xavier())
    model(images(size=size, channels=channels))
    return model


def shapes(model):
    return {name[len('net_'):]: p.shape for name, p in model.collect_params().items()}


# ---- Net() is still the original port's network ------------------------------------------

def test_net_without_arguments_is_the_seed_stn_and_lenet_with_the_same_names():
    model = built()
    assert list(shapes(model)) == [
        'stn_loc_conv0_weight', 'stn_loc_conv0_bias', 'stn_loc_conv1_weight', 'stn_loc_conv1_bias',
        'stn_loc_dense0_weight', 'stn_loc_dense0_bias', 'stn_regressor_weight',
        'stn_regressor_bias', 'lenet_conv0_weight', 'lenet_conv0_bias', 'lenet_conv1_weight',
        'lenet_conv1_bias', 'lenet_dense0_weight', 'lenet_dense0_bias', 'lenet_dense1_weight',
        'lenet_dense1_bias']
    assert net.trainable_params(model) == 27360
    model.hybridize()
    model(images())
    internals = model(mx.sym.var('data')).get_internals().list_outputs()
    assert {'net_stn_bilinearsampler0_output', 'net_stn_regressor_fwd_output',
            'net_stn_gridgenerator0_output'} <= set(internals)


# ---- the paper's layers --------------------------------------------------------------------

def test_the_fcn_has_two_hidden_layers_and_the_st_fcn_localisation_three_of_32_units():
    assert shapes(built(model='fcn', transform='none', width=100)) == {
        'fcn_dense0_weight': (100, 784), 'fcn_dense0_bias': (100,),
        'fcn_dense1_weight': (100, 100), 'fcn_dense1_bias': (100,),
        'fcn_dense2_weight': (10, 100), 'fcn_dense2_bias': (10,)}
    loc = {k: v for k, v in shapes(built(model='fcn', transform='affine')).items()
           if k.startswith('stn_') and k.endswith('weight')}
    assert loc == {'stn_loc_dense0_weight': (32, 784), 'stn_loc_dense1_weight': (32, 32),
                   'stn_loc_dense2_weight': (32, 32), 'stn_regressor_weight': (6, 32)}


def test_the_cnn_is_conv9_pool_conv7_pool_and_the_st_cnn_localisation_sees_half_the_input():
    # 42x42 input: the localisation pools it to 21x21, 5x5 convs and a 2x2 pool leave 4x4;
    # the classifier's unpadded 9x9 conv leaves 34, pooled 17, the 7x7 conv padded by 2
    # leaves 15, pooled 7.
    weights = {k: v for k, v in shapes(built(42, model='cnn', transform='tps', width=12)).items()
               if k.endswith('weight')}
    assert weights == {'stn_loc_conv0_weight': (20, 1, 5, 5),
                       'stn_loc_conv1_weight': (20, 20, 5, 5),
                       'stn_loc_dense0_weight': (20, 20 * 4 * 4), 'stn_regressor_weight': (32, 20),
                       'cnn_conv0_weight': (12, 1, 9, 9), 'cnn_conv1_weight': (24, 12, 7, 7),
                       'cnn_dense0_weight': (10, 24 * 7 * 7)}


@pytest.mark.parametrize('transform', ['affine', 'tps'])
def test_pooling_after_the_transformer_halves_what_the_classifier_sees(transform):
    pooled = built(42, model='cnn', transform=transform, width=8, pool_after_stn=True)
    assert shapes(pooled)['cnn_dense0_weight'] == (10, 16 * 2 * 2)   # 21 -> 13 -> 6 -> 4 -> 2
    assert pooled.stn(images(size=42))[0].shape == (2, 1, 42, 42)
    # Without a transformer there is nothing to pool after: the baseline sees 42x42.
    baseline = built(42, model='fcn', transform='none', width=8, pool_after_stn=True)
    assert shapes(baseline)['fcn_dense0_weight'] == (8, 42 * 42)


@pytest.mark.parametrize('transform', TRANSFORMS)
@pytest.mark.parametrize('model', ['lenet', 'fcn', 'cnn'])
def test_every_model_takes_every_family_and_hybridizes(model, transform):
    for size, pool in [(28, False), (42, True)]:
        m = Net(model=model, transform=transform, width=8, pool_after_stn=pool)
        m.initialize(mx.init.Xavier())
        x = images(size=size)
        logits = m(x)
        m.hybridize()
        assert logits.shape == (2, 10)
        np.testing.assert_allclose(m(x).asnumpy(), logits.asnumpy(), atol=1e-5)


def test_an_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match='model must be one of'):
        Net(model='resnet')


# ---- transformers in parallel (MNIST addition's 2xST, appendix A.1) ----------------------------

def two_channel_pairs(n=4):
    """(n, 2, 42, 42): a blob in channel 0 at the left, another in channel 1 at the right."""
    x = np.zeros((n, 2, 42, 42), np.float32)
    x[:, 0, 15:25, 5:15] = 1
    x[:, 1, 20:30, 28:38] = 1
    return mx.nd.array(x)


@pytest.mark.parametrize('model', ['fcn', 'cnn'])
def test_parallel_transformers_start_as_the_identity_and_stack_their_outputs(model):
    two = built(42, model=model, transform='affine', transformers=2, channels=2)
    x = two_channel_pairs()
    out, theta = two.stn(x)
    assert out.shape == (4, 4, 42, 42) and theta.shape == (4, 12)
    np.testing.assert_allclose(out.asnumpy(), np.concatenate([x.asnumpy()] * 2, 1), atol=1e-5)
    assert sorted({p.split('_')[1] for p in two.collect_params() if '_stn' in p}) == ['stn0', 'stn1']


def test_each_parallel_transformer_gets_its_own_gradient():
    two = built(42, model='fcn', transform='affine', transformers=2, channels=2)
    x = two_channel_pairs()
    with mx.autograd.record():
        out, _ = two.stn(x)
        # a loss on the first transformer's two channels only
        loss = (out[:, :2] * mx.nd.arange(42).reshape((1, 1, 1, 42))).sum()
    loss.backward()
    grads = {k: v.grad().abs().sum().asscalar() for k, v in two.collect_params().items()
             if k.endswith('regressor_bias')}
    assert grads['net_stn0_regressor_bias'] > 0 and grads['net_stn1_regressor_bias'] == 0
    # and the two are separate parameters: a step on one leaves the other at the identity
    trainer = gluon.Trainer(two.collect_params(), 'sgd', {'learning_rate': 0.1})
    trainer.step(1, ignore_stale_grad=True)
    theta = {k: v.data().asnumpy() for k, v in two.collect_params().items()
             if k.endswith('regressor_bias')}
    assert not np.allclose(theta['net_stn0_regressor_bias'], theta['net_stn1_regressor_bias'])
    np.testing.assert_allclose(theta['net_stn1_regressor_bias'], [1, 0, 0, 0, 1, 0])


def test_a_net_with_parallel_transformers_exports_and_loads(tmp_path):
    two = built(42, model='fcn', transform='tps', transformers=2, channels=2, num_classes=19,
                pool_after_stn=True)
    two.hybridize()
    x = two_channel_pairs()
    logits = two(x)
    assert logits.shape == (4, 19)
    two.export(str(tmp_path / 'model'), epoch=1)
    loaded = gluon.SymbolBlock.imports(str(tmp_path / 'model-symbol.json'), ['data'],
                                       str(tmp_path / 'model-0001.params'))
    np.testing.assert_allclose(loaded(x).asnumpy(), logits.asnumpy(), atol=1e-5)


def test_one_transformer_per_channel_passes_on_its_own_channel_and_learns_from_it_alone():
    two = built(42, model='cnn', transform='affine', transformers=2, channels=2, per_channel=True)
    x = two_channel_pairs()
    out, theta = two.stn(x)
    assert out.shape == (4, 2, 42, 42) and theta.shape == (4, 12)
    np.testing.assert_allclose(out.asnumpy(), x.asnumpy(), atol=1e-5)   # identity at start
    with mx.autograd.record():
        out, _ = two.stn(x)
        loss = (out[:, 1] * mx.nd.arange(42).reshape((1, 1, 42))).sum()   # channel 1 only
    loss.backward()
    grads = {k: v.grad().abs().sum().asscalar() for k, v in two.collect_params().items()
             if k.endswith('regressor_bias')}
    assert grads['net_stn1_regressor_bias'] > 0 and grads['net_stn0_regressor_bias'] == 0
    two.hybridize()
    assert two(x).shape == (4, 10)


def test_one_transformer_per_channel_needs_as_many_channels_as_transformers(capsys):
    with pytest.raises(ValueError, match='need 2-channel inputs, not 1'):
        built(42, model='fcn', transformers=2, per_channel=True)
    with pytest.raises(ValueError, match='per_channel needs transformers side by side'):
        Net(model='fcn', per_channel=True)
    flags = ['--model', 'cnn', '--per-channel']
    args = RunConfig.from_flags(['--dataset', 'addition', '--transformers', '2', *flags])
    assert args.display_name == '2xST-CNN (affine), one per channel'
    for bad, message in [(['--dataset', 'addition', '--transformers', '3'], 'needs --transformers 2'),
                         (['--dataset', 'rts', '--transformers', '2'], 'rts has one channel')]:
        with pytest.raises(SystemExit):
            RunConfig.from_flags([*bad, *flags])
        assert message in capsys.readouterr().err


def test_a_net_with_one_transformer_per_channel_exports_and_loads(tmp_path):
    two = built(42, model='fcn', transform='affine', transformers=2, channels=2, num_classes=19,
                pool_after_stn=True, per_channel=True)
    two.hybridize()
    x = two_channel_pairs()
    logits = two(x)
    two.export(str(tmp_path / 'model'), epoch=1)
    loaded = gluon.SymbolBlock.imports(str(tmp_path / 'model-symbol.json'), ['data'],
                                       str(tmp_path / 'model-0001.params'))
    np.testing.assert_allclose(loaded(x).asnumpy(), logits.asnumpy(), atol=1e-5)


def test_transformers_in_parallel_need_a_family_and_the_gluon_api(capsys):
    with pytest.raises(ValueError, match='transformers must be >= 1'):
        Net(model='fcn', transformers=0)
    for flags in (['--no-stn'], ['--api', 'symbol']):
        with pytest.raises(SystemExit):
            RunConfig.from_flags(['--transformers', '2', *flags])
        assert '--transformers: 2 transformers need --api gluon and a --transform' in \
            capsys.readouterr().err


# ---- transformers inside the network (ST-CNN Multi style, section 4.2) --------------------------

@pytest.mark.parametrize('pooled', [False, True])
def test_a_transformer_on_the_feature_map_starts_as_the_identity(pooled):
    plain = built(42, model='cnn', transform='affine', width=8, pool_after_stn=pooled)
    deep = built(42, model='cnn', transform='affine', width=8, pool_after_stn=pooled,
                 places=('input', 'conv1'))
    side = ((21 if pooled else 42) - 8) // 2          # conv 9x9, then max-pool 2x2
    assert deep.feature_stn.target_shape == (side, side)
    for name, param in plain.collect_params().items():    # the same input transformer and CNN
        deep.collect_params()[name].set_data(param.data())
    x = images(3, 42)
    np.testing.assert_allclose(deep(x).asnumpy(), plain(x).asnumpy(), atol=1e-5)
    h, _ = deep.stn(x)
    h = deep.pool(h) if pooled else h
    features = deep.classifier[1](deep.classifier[0]((h - net.MEAN) / net.STD))
    warped, theta = deep.feature_stn(features)                  # every channel, unchanged
    np.testing.assert_allclose(warped.asnumpy(), features.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(theta.asnumpy(), [[1, 0, 0, 0, 1, 0]] * 3, atol=1e-6)


def test_transformers_in_series_export_and_load_with_symbolblock_imports(tmp_path):
    deep = built(42, model='cnn', transform='projective', width=8, pool_after_stn=True,
                 places=('input', 'conv1'))
    alone = built(42, model='cnn', transform='affine', width=8, places=('conv1',))
    for k, model in enumerate((deep, alone)):
        model.feature_stn.regressor.bias.set_data(mx.nd.array(
            np.array(stn_module.identity_theta(model.feature_stn.transform)) * 0.8))  # a zoom
        model.hybridize()
        x = images(5, 42)
        logits = model(x)
        model.export(str(tmp_path / f'model{k}'), epoch=1)
        loaded = gluon.SymbolBlock.imports(str(tmp_path / f'model{k}-symbol.json'), ['data'],
                                           str(tmp_path / f'model{k}-0001.params'))
        np.testing.assert_allclose(loaded(x).asnumpy(), logits.asnumpy(), atol=1e-5)
    names = {p.split('_')[1] + '_' + p.split('_')[2] for p in deep.collect_params() if '_stn_' in p}
    assert 'stn_conv1' in names and 'stn_loc' in names


@pytest.mark.parametrize('kwargs, message', [
    (dict(model='fcn', places=('conv1',)), 'conv1 for model cnn only'),
    (dict(model='cnn', places=('output',)), 'places must be some of'),
    (dict(model='cnn', places=('input', 'conv1'), transformers=2), 'on the input only'),
])
def test_a_transformer_goes_only_where_a_model_has_room_for_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Net(transform='affine', **kwargs)


@pytest.mark.parametrize('flags, message', [
    (['--model', 'cnn', '--stn-at', 'input,middle'], "--stn-at: 'input,middle': use some of"),
    (['--model', 'fcn', '--stn-at', 'conv1'], '--stn-at: conv1 needs --model cnn'),
    (['--model', 'cnn', '--no-stn', '--stn-at', 'conv1'], '--stn-at: conv1 needs --model cnn'),
])
def test_stn_at_is_checked(flags, message, capsys):
    with pytest.raises(SystemExit):
        RunConfig.from_flags(flags)
    assert message in capsys.readouterr().err
    args = RunConfig.from_flags(['--model', 'cnn', '--stn-at', 'conv1,input'])
    assert args.stn_at == ['input', 'conv1'] and net.build(args).feature_stn is not None


@pytest.mark.parametrize('model, transform', [('fcn', 'none'), ('cnn', 'affine')])
def test_the_classifier_standardises_with_mnists_mean_and_std_unless_input_norm_is_none(
        model, transform, tmp_path):
    standard = built(42, model=model, transform=transform, width=8, pool_after_stn=True)
    raw = built(42, model=model, transform=transform, width=8, pool_after_stn=True,
                input_norm='none')
    standard.save_parameters(str(tmp_path / 'w.params'))
    raw.load_parameters(str(tmp_path / 'w.params'))      # the same weights
    x = images(3, 42)
    for network, mean, std in ((standard, net.MEAN, net.STD), (raw, 0, 1)):
        seen = network.pool(network.stn(x)[0]) if network.stn is not None else x
        np.testing.assert_allclose(network.classifier((seen - mean) / std).asnumpy(),
                                   network(x).asnumpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(raw(x).asnumpy(), standard(x).asnumpy(), atol=1e-3)
    with pytest.raises(ValueError, match=r"input_norm must be one of \('mnist', 'none'\)"):
        Net(model=model, input_norm='imagenet')


def test_input_norm_reaches_the_net_and_needs_the_gluon_api(capsys):
    assert net.build(RunConfig.from_flags(['--model', 'fcn', '--input-norm', 'none'])).std == 1
    assert net.build(RunConfig.from_flags(['--model', 'fcn'])).std == net.STD
    with pytest.raises(SystemExit):
        RunConfig.from_flags(['--api', 'symbol', '--input-norm', 'none'])
    assert '--input-norm: --api symbol standardises with MNIST' in capsys.readouterr().err


def test_a_paper_model_exports_and_loads_with_symbolblock_imports(tmp_path):
    model = built(42, model='cnn', transform='projective', width=8, pool_after_stn=True)
    model.hybridize()
    x = images(5, 42)
    logits = model(x)
    model.export(str(tmp_path / 'model'), epoch=1)
    loaded = gluon.SymbolBlock.imports(str(tmp_path / 'model-symbol.json'), ['data'],
                                       str(tmp_path / 'model-0001.params'))
    np.testing.assert_allclose(loaded(x).asnumpy(), logits.asnumpy(), atol=1e-5)


# ---- parameter budgets -----------------------------------------------------------------------

def documented_table():
    """{(side, model, transform): (width, params)} from net.py's docstring table."""
    table, side = {}, None
    lines = net.__doc__.splitlines()
    for i, line in enumerate(lines):
        found = re.search(r'\((\d+)(, pooled \d+)?\)\s+[\d,]+\s+(FCN|CNN)', line) or \
            re.search(r'^\s+(CNN)\s+width', line)
        if not found:
            continue
        side = int(found.group(1)) if found.lastindex >= 3 else side
        model = found.group(found.lastindex).lower()
        widths = [int(w) for w in line.split('width')[1].split()]
        counts = [int(c.replace(',', '')) for c in lines[i + 1].split('params')[1].split()]
        for transform, width, count in zip(TRANSFORMS, widths, counts):
            table[side, model, transform] = width, count
    return table


def test_the_documented_widths_and_counts_are_what_the_code_builds():
    table = documented_table()
    assert len(table) == 3 * 2 * 5
    for (side, model, transform), (width, count) in table.items():
        budget = net.BUDGETS[side]
        assert abs(count - budget) < 0.03 * budget, (side, model, transform)
        assert net.count_params((1, side, side), model=model, transform=transform, width=width,
                                pool_after_stn=side != 28) == count, (side, model, transform)


@pytest.mark.parametrize('model, transform', [('fcn', 'none'), ('fcn', 'tps'), ('cnn', 'affine')])
def test_fit_width_brings_a_model_to_its_experiments_budget(model, transform):
    width = net.fit_width(model, transform, (1, 28, 28))
    assert documented_table()[28, model, transform][0] == width
    count = net.count_params((1, 28, 28), model=model, transform=transform, width=width)
    assert abs(count - net.BUDGETS[28]) < 0.03 * net.BUDGETS[28]


# ---- train.py ------------------------------------------------------------------------------

def test_the_default_run_is_the_seed_lenet_with_an_affine_transformer():
    args = RunConfig.from_flags([])
    assert (args.model, args.transform, args.width) == ('lenet', 'affine', None)


@pytest.mark.parametrize('flags', [['--no-stn'], ['--transform', 'none']])
def test_no_stn_is_a_synonym_of_transform_none(flags):
    args = RunConfig.from_flags(flags)
    assert args.transform == 'none' and not hasattr(args, 'no_stn')


def test_the_symbol_api_still_takes_the_seed_network_with_or_without_a_transformer():
    for flags in [['--api', 'symbol'], ['--api', 'symbol', '--no-stn'],
                  ['--api', 'symbol', '--transform', 'none']]:
        RunConfig.from_flags(flags)


@pytest.mark.parametrize('dataset, model, pooled', [('rts', 'cnn', True), ('tc', 'fcn', True),
                                                    ('addition', 'fcn', True),
                                                    ('rts', 'lenet', False), ('p', 'cnn', False)])
def test_only_fcn_and_cnn_pool_after_the_transformer_and_only_on_the_large_canvases(dataset, model,
                                                                                    pooled):
    args = RunConfig.from_flags(['--dataset', dataset, '--model', model])
    assert args.pool_after_stn == pooled
    args = RunConfig.from_flags(['--dataset', dataset, '--model', model, '--no-stn'])
    assert not args.pool_after_stn


def test_summary_prints_the_layers_and_counts_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / 'run'
    train.main(['--summary', '--dataset', 'rts', '--model', 'cnn', '--transform', 'tps',
                '--out', str(out)])
    text = capsys.readouterr().out
    width, count = documented_table()[42, 'cnn', 'tps']
    assert f'ST-CNN (tps) on rts (42x42 inputs), width {width}' in text
    assert 'Conv2D' in text and 'SpatialTransformer' in text
    assert re.search(rf'total trainable\s+{count:,d}\s+\(budget 200,000\)', text)
    assert not out.exists()


@pytest.mark.parametrize('mult', [2, 4])
def test_budget_mult_fits_the_width_to_a_multiple_of_the_experiments_budget(capsys, mult):
    train.main(['--summary', '--dataset', 'rts', '--model', 'fcn', '--no-stn',
                '--budget-mult', str(mult)])
    text = capsys.readouterr().out
    count = int(re.search(r'total trainable\s+([\d,]+)', text).group(1).replace(',', ''))
    assert f'(budget {mult * 200_000:,d})' in text
    assert abs(count - mult * 200_000) < 0.01 * mult * 200_000


@needs_mnist
def test_a_paper_model_run_records_its_model_and_family_and_resumes_with_them(tmp_path):
    flags = ['--data-dir', REAL_DIR, '--out', str(tmp_path), '--train-size', '1000',
             '--batch-size', '50']
    train.main([*flags, '--model', 'fcn', '--transform', 'attention', '--epochs', '1'])
    config = json.load(open(tmp_path / 'config.json'))
    width = documented_table()[28, 'fcn', 'attention'][0]
    assert (config['model'], config['transform'], config['width']) == ('fcn', 'attention', width)
    assert config['num_params'] == documented_table()[28, 'fcn', 'attention'][1]
    assert (tmp_path / 'compare.jpg').exists()  # every run with a transformer gets one
    train.main([*flags, '--resume', '--epochs', '2'])  # model and family come from config.json
    params = mx.nd.load(str(tmp_path / 'model-0002.params'))
    assert params['arg:net_fcn_dense0_weight'].shape == (width, 784)
    assert params['arg:net_stn_regressor_weight'].shape == (3, 32)
