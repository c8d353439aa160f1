"""RunConfig: a run's settings in one object, its checks, its conversions to and from
train.py's flags and config.json, and the facts derived from it."""
import dataclasses

import pytest

import net
import train
from stngluon.config import ADDED_LATER, ConfigError, RunConfig, as_flags


def test_its_defaults_are_train_pys_defaults():
    config, _ = train.parse_args([])
    assert config == RunConfig()
    assert (config.model, config.transform, config.epochs, config.lr_steps) == ('lenet', 'affine', 20, [12, 16])


@pytest.mark.parametrize('config', [
    RunConfig(),
    RunConfig(dataset='rts', model='cnn', transform='tps', tps_grid=3, lr=0.0012345678, width=40),
    RunConfig(dataset='addition', model='cnn', transformers=2, per_channel=True, lr_mode='cosine',
              warmup_epochs=0.5, lr_steps=[], fresh_distortions=True, train_size=500),
    RunConfig(model='cnn', stn_at=['input', 'conv1'], optimizer='sgd', momentum=0.5, budget_mult=2.0),
])
def test_its_flags_parse_back_to_the_same_config(config):
    assert RunConfig.from_flags(config.flags()) == config


def test_flags_show_numbers_short_and_exact():
    assert as_flags({'lr': 0.001, 'budget_mult': 2.0, 'lr_steps': [3, 4], 'fresh_distortions': True,
                     'width': None, 'per_channel': False}) == \
        ['--lr', '0.001', '--budget-mult', '2', '--lr-steps', '3,4', '--fresh-distortions']
    assert as_flags({'lr': 0.0012345678}) == ['--lr', '0.0012345678']


def test_a_config_json_from_before_later_settings_resumes_with_their_defaults():
    saved = dict(RunConfig(model='fcn', width=64).as_dict(), num_params=123, out='result')
    for key in ADDED_LATER:
        del saved[key]
    config = RunConfig.from_saved(saved)
    assert config == RunConfig(model='fcn', width=64)


def test_a_config_json_from_before_precision_existed_resumes_in_float32(monkeypatch):
    """Such runs trained in float32, whatever --precision auto would choose now."""
    from stngluon import runtime
    monkeypatch.setattr(runtime, 'cpu', lambda: ('A CPU with bfloat16', ['AVX-512 bf16']))
    saved = RunConfig(dataset='rts', model='cnn', transform='none', precision='float32',
                      width=40).as_dict()
    del saved['precision']
    assert RunConfig.from_saved(saved).precision == 'float32'


@pytest.mark.parametrize('isa, model, transform, api, precision', [
    (['AVX-512', 'AVX-512 bf16'], 'cnn', 'none', 'gluon', 'bfloat16'),   # the CNN baselines
    (['AVX-512', 'AVX-512 bf16'], 'cnn', 'affine', 'gluon', 'float32'),  # not measured
    (['AVX-512', 'AVX-512 bf16'], 'fcn', 'none', 'gluon', 'float32'),    # not faster
    (['AVX-512', 'AVX-512 bf16'], 'lenet', 'affine', 'gluon', 'float32'),
    (['AVX-512', 'AVX-512 bf16'], 'lenet', 'none', 'symbol', 'float32'),
    (['AVX2', 'AVX-512'], 'cnn', 'none', 'gluon', 'float32'),            # no bfloat16 here
])
def test_auto_precision_is_bfloat16_only_where_it_was_measured_faster_and_as_accurate(
        monkeypatch, isa, model, transform, api, precision):
    from stngluon import runtime
    monkeypatch.setattr(runtime, 'cpu', lambda: ('A CPU', isa))
    config = RunConfig(model=model, transform=transform, api=api)
    assert config.precision == precision   # resolved when made: never 'auto' in a run
    assert RunConfig.from_flags(['--model', model, '--transform', transform, '--api', api,
                                 '--precision', 'float32']).precision == 'float32'


def test_a_saved_width_stands_for_the_budget_it_was_fitted_to():
    resolved = RunConfig(dataset='rts', model='cnn', budget_mult=2.0).resolved()
    assert RunConfig.from_saved(resolved.as_dict()).width == resolved.width


def test_a_config_json_without_a_setting_is_refused():
    saved = RunConfig().as_dict()
    del saved['lr']
    with pytest.raises(ConfigError, match=r"config.json is missing or lacks \['lr'\]"):
        RunConfig.from_saved(saved)


@pytest.mark.parametrize('changes, flag', [
    ({'model': 'vgg'}, '--model'), ({'lr': float('nan')}, '--lr'), ({'epochs': 0}, '--epochs'),
    ({'momentum': 1.0}, '--momentum'), ({'warmup_epochs': 20}, '--warmup-epochs'),
    ({'seed': -1}, '--seed'), ({'lr_steps': [4, 3]}, '--lr-steps'), ({'stn_at': ['conv1']}, '--stn-at'),
    ({'tps_grid': 1}, '--tps-grid'), ({'width': 8}, '--width'), ({'per_channel': True}, '--per-channel'),
    ({'transformers': 2, 'transform': 'none'}, '--transformers'),
    ({'api': 'symbol', 'model': 'cnn'}, '--api'),
])
def test_settings_no_run_can_have_are_refused_naming_their_flag(changes, flag):
    with pytest.raises(ConfigError, match=f'argument {flag}: '):
        RunConfig(**changes)
    with pytest.raises(ConfigError, match=f'argument {flag}: '):
        dataclasses.replace(RunConfig(), **changes)


@pytest.mark.parametrize('dataset, model, transform, shape, classes, pooled', [
    ('mnist', 'lenet', 'affine', (1, 28, 28), 10, False),
    ('rts', 'cnn', 'tps', (1, 42, 42), 10, True),
    ('rts', 'cnn', 'none', (1, 42, 42), 10, False),
    ('tc', 'fcn', 'affine', (1, 60, 60), 10, True),
    ('addition', 'cnn', 'affine', (2, 42, 42), 19, True),
    ('p', 'cnn', 'projective', (1, 28, 28), 10, False),
])
def test_it_derives_the_input_the_classes_and_the_pooling(dataset, model, transform, shape,
                                                         classes, pooled):
    config = RunConfig(dataset=dataset, model=model, transform=transform)
    assert (config.image_shape, config.channels, config.num_classes, config.pool_after_stn) == \
        (shape, shape[0], classes, pooled)


def test_resolved_fits_the_width_to_the_budget_and_names_the_network():
    config = RunConfig(dataset='rts', model='cnn', transform='affine', budget_mult=2.0)
    assert config.budget == 2 * net.parameter_budget(config.image_shape)
    resolved = config.resolved()
    assert resolved.width == net.fit_width('cnn', 'affine', (1, 42, 42), budget=config.budget,
                                           pool_after_stn=True)
    assert resolved.resolved() is resolved and RunConfig().resolved().width is None
    assert resolved.network_name == 'ST-CNN (affine) on rts, batch 64'


@pytest.mark.parametrize('changes, input_dense', [
    ({'model': 'fcn', 'transform': 'none'}, True),
    ({'model': 'fcn', 'transform': 'none', 'precision': 'bfloat16'}, False),
    ({'model': 'fcn', 'transform': 'affine'}, False),   # it reads the transformer's output
    ({'model': 'cnn', 'transform': 'none'}, False),
])
def test_the_networks_whose_first_layer_reads_the_image_are_known(changes, input_dense):
    """net.InputDense's networks, whose input layer runtime.py chooses."""
    assert RunConfig(**changes).input_dense is input_dense
