"""The operator library (ops.py, ops/*.cc) and the Adam that updates every parameter in one
call (optim.py, ops/adam_update.cc): the same bits as MXNet's adam_update and Adam, MXNet's
own updates wherever the library is missing, and checkpoints of either that load; train.py
with the library or without it, the same run."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from stngluon import compat, runtime  # noqa: F401
import mxnet as mx
from mxnet import autograd, gluon

from stngluon import ops, optim
from conftest import bits, brief_train_py
from test_mnist import REAL_DIR, needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_library_older_than_its_sources_is_not_loaded(tmp_path):
    stale = tmp_path / 'stale.so'
    stale.write_bytes(b'not a library')
    os.utime(stale, (0, 0))
    assert not ops.fresh(str(stale))
    assert not ops.fresh(str(tmp_path / 'missing.so'))


def test_without_a_compiler_building_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match='no-such-compiler'):
        ops.build(str(tmp_path / 'lib.so'), compiler='no-such-compiler')
    assert os.listdir(tmp_path) == []


def test_one_call_updates_every_parameter_to_the_bits_adam_update_gives(op_library):
    """Several parameters (large ones across threads), each with its own rate and weight
    decay, gradient clipping on and off, zero and subnormal gradients, 60 steps."""
    rng = np.random.RandomState(0)
    shapes = [(1764, 40), (40,), (300, 30), (10,), (3, 5)]
    ref, ours = [], []
    for shape in shapes:
        w, g = rng.randn(*shape).astype(np.float32), rng.randn(*shape).astype(np.float32)
        ref.append([mx.nd.array(w), mx.nd.array(g), mx.nd.zeros(shape), mx.nd.zeros(shape)])
        ours.append([mx.nd.array(w), mx.nd.array(g), mx.nd.zeros(shape), mx.nd.zeros(shape)])
    lr_of = lambda t, k: 1e-3 * (0.1 if k == 1 else 1) * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    wd_of = lambda k: 1e-4 if k == 2 else 0.
    for t in range(1, 61):
        clip = {'clip_gradient': 0.5} if t % 2 else {}
        for k, (w, g, m, v) in enumerate(ref):
            mx.nd.adam_update(w, g, m, v, out=w, lr=lr_of(t, k), wd=wd_of(k), rescale_grad=1 / 64,
                              beta1=0.9, beta2=0.999, epsilon=1e-8, **clip)
        getattr(mx.nd, optim.OP)(*[a for p in ours for a in p], num_weights=len(ours),
                                 lrs=','.join(str(lr_of(t, k)) for k in range(len(ours))),
                                 wds=','.join(str(wd_of(k)) for k in range(len(ours))),
                                 rescale_grad=1 / 64, beta1=0.9, beta2=0.999, epsilon=1e-8,
                                 out=[p[0] for p in ours], **clip)
        for r, o in zip(ref, ours):   # the next gradients: some zero, some subnormal
            g = rng.randn(*r[1].shape).astype(np.float32) * 0.01
            g.ravel()[::5], g.ravel()[1::7] = 0, 1e-39
            r[1][:], o[1][:] = g, g
    for r, o in zip(ref, ours):
        for a, b in zip(r, o):   # weight, gradient, mean, var
            np.testing.assert_array_equal(bits(a), bits(b))


def test_a_list_of_rates_that_does_not_match_the_parameters_is_refused(op_library):
    w, g, m, v = (mx.nd.ones(3) for _ in range(4))
    with pytest.raises(mx.base.MXNetError, match='one float per parameter'):
        getattr(mx.nd, optim.OP)(w, g, m, v, num_weights=1, lrs='0.1,0.2', wds='0', out=w)
        w.wait_to_read()


ADAM = {'learning_rate': 0.01, 'wd': 1e-4, 'clip_gradient': 1.0}


def small_net(seed):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential(prefix='net_')   # the same names, so the same order, in every net
    with net.name_scope():
        net.add(gluon.nn.Dense(40, activation='relu'), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((2, 100)))
    net[0].weight.lr_mult, net[1].bias.wd_mult = 0.1, 0.
    return net


def train(optimizer, steps=30, seed=0, trainer_class=gluon.Trainer):
    """A small two-layer network after ``steps`` Adam steps (``optimizer``: a name or an
    optimizer) by a ``trainer_class``; (net, trainer)."""
    net = small_net(seed)
    trainer = trainer_class(net.collect_params(), optimizer, ADAM if optimizer == 'adam' else None)
    rng = np.random.RandomState(seed)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(steps):
        x, y = mx.nd.array(rng.randn(16, 100)), mx.nd.array(rng.randint(0, 10, 16))
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(16)
    return net, trainer


def weights(net):
    """{layer index and weight or bias: bits} (each network names its layers afresh)."""
    return {f'{k} {name.rsplit("_", 1)[1]}': bits(p.data())
            for k, block in enumerate(net) for name, p in block.collect_params().items()}


def adam():
    return optim.create('adam', **ADAM)


def test_the_trainer_with_it_trains_the_weights_mxnets_adam_trains_in_one_call_a_step(
        op_library, monkeypatch):
    calls = []
    invoke = optim.invoke
    monkeypatch.setattr(optim, 'invoke', lambda *a, **k: calls.append(k['num_weights']) or invoke(*a, **k))
    expected, _ = train('adam')
    got, trainer = train(adam())
    assert isinstance(trainer._optimizer, optim.Adam)
    assert calls == [4] * 30   # both layers' weights and biases, every step
    for name, w in weights(expected).items():
        np.testing.assert_array_equal(weights(got)[name], w, err_msg=name)


def test_its_trainer_goes_straight_to_that_call_after_the_first_step_with_the_same_bits(
        op_library, monkeypatch):
    """optim.Trainer: the first step makes the states (gluon.Trainer's way), the others skip
    gluon.Trainer's walk over the parameters; the weights are gluon.Trainer's, bit for bit."""
    expected, _ = train(adam())
    walks = []
    walk = gluon.Trainer._update
    monkeypatch.setattr(gluon.Trainer, '_update', lambda *a, **k: walks.append(1) or walk(*a, **k))
    got, trainer = train(adam(), trainer_class=optim.Trainer)
    assert len(walks) == 1 and trainer._optimizer.num_update == 30
    for name, w in weights(expected).items():
        np.testing.assert_array_equal(weights(got)[name], w, err_msg=name)


def test_its_trainer_still_stops_at_a_gradient_no_backward_has_renewed(op_library):
    net, trainer = train(adam(), steps=2, trainer_class=optim.Trainer)
    with autograd.record():   # the second layer only: the first layer's gradients are stale
        loss = net[1](mx.nd.ones((4, 40))).sum()
    loss.backward()
    with pytest.raises(UserWarning, match='has not been updated by backward'):
        trainer.step(4)


@pytest.mark.parametrize('trainer_class', [gluon.Trainer, optim.Trainer])
@pytest.mark.parametrize('first', ['mxnet', 'fused'])
def test_a_checkpoint_of_either_adam_resumes_into_it_as_an_uninterrupted_run(op_library, tmp_path,
                                                                           first, trainer_class):
    """20 steps with MXNet's Adam (a checkpoint written before optim.Adam) or this one, saved,
    loaded, 10 more with this one: the weights of 30 uninterrupted steps."""
    whole, _ = train(adam(), steps=30)
    net, trainer = train('adam' if first == 'mxnet' else adam(), steps=20)
    trainer.save_states(str(tmp_path / 'states'))
    net.save_parameters(str(tmp_path / 'params'))
    resumed = small_net(0)
    resumed.load_parameters(str(tmp_path / 'params'))
    trainer = trainer_class(resumed.collect_params(), adam())
    trainer.load_states(str(tmp_path / 'states'))
    optim.adopt(trainer)
    assert isinstance(trainer._optimizer, optim.Adam) and trainer._updaters[0].aggregate_updates
    rng = np.random.RandomState(0)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for step in range(30):
        x, y = mx.nd.array(rng.randn(16, 100)), mx.nd.array(rng.randint(0, 10, 16))
        if step < 20:
            continue   # the batches of the first 20 steps
        with autograd.record():
            loss = loss_fn(resumed(x), y)
        loss.backward()
        trainer.step(16)
    for name, w in weights(whole).items():
        np.testing.assert_array_equal(weights(resumed)[name], w, err_msg=name)


def test_parameters_it_cannot_update_get_mxnets_own_update(op_library):
    """float16 weights (with multi_precision) are left to mx.optimizer.Adam, bit for bit."""
    w = mx.nd.array(np.random.RandomState(1).randn(50)).astype('float16')
    g = mx.nd.array(np.random.RandomState(2).randn(50)).astype('float16')
    results = []
    for optimizer in (mx.optimizer.Adam(multi_precision=True), optim.Adam(multi_precision=True)):
        weight = w.copy()
        state = optimizer.create_state_multi_precision(0, weight)
        for _ in range(5):
            optimizer.update_multi_precision([0] if isinstance(optimizer, optim.Adam) else 0,
                                             [weight] if isinstance(optimizer, optim.Adam) else weight,
                                             [g] if isinstance(optimizer, optim.Adam) else g,
                                             [state] if isinstance(optimizer, optim.Adam) else state)
        results.append(weight.asnumpy())
    np.testing.assert_array_equal(results[0], results[1])


def test_where_the_library_is_missing_it_updates_as_mxnets_adam_does(tmp_path):
    code = ('import sys; sys.path.insert(0, "tests"); import numpy as np; '
            'from test_ops import train, adam, weights; from stngluon import ops; '
            'a, _ = train("adam"); b, _ = train(adam()); '
            'print(ops.load(), all(np.array_equal(weights(a)[n], w) for n, w in weights(b).items()))')
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, STN_OPS_LIBRARY=str(tmp_path / 'missing.so')),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ['False', 'True']


def test_it_pickles_as_the_trainer_saves_it_without_what_it_found_in_this_process(op_library):
    """A resumed run loads the library afresh (or finds it missing)."""
    _, trainer = train(adam(), steps=2)
    again = pickle.loads(pickle.dumps(trainer._optimizer))
    assert isinstance(again, optim.Adam) and again.aggregate_num == trainer._optimizer.aggregate_num
    assert again.num_update == 2 and '_fused' not in again.__dict__


def test_weights_an_inference_forward_left_in_onednns_layout_are_updated_as_mxnet_updates_them(
        op_library):
    """Evaluation between epochs has oneDNN keep a convolution's weight in its blocked
    layout; the next update must neither stop nor differ from MXNet's Adam training the
    same convolution with no inference forwards (MXNet's own adam_update on a weight in that
    layout is not a reference: under the threaded engine it gave other weights about one
    process in thirty, a race inside MXNet 1.9.1)."""
    results = []
    for optimizer, evaluate in (('adam', False), (adam(), True)):
        mx.random.seed(3)
        conv = gluon.nn.Conv2D(16, 3, in_channels=8)
        conv.initialize()
        conv.hybridize(static_alloc=True, static_shape=True)
        trainer = gluon.Trainer(conv.collect_params(), optimizer, ADAM if optimizer == 'adam' else None)
        rng = np.random.RandomState(0)
        for _ in range(3):
            x = mx.nd.array(rng.randn(4, 8, 10, 10))
            if evaluate:
                conv(x).asnumpy()   # inference mode: the weight goes to oneDNN's layout
            for _ in range(2):
                with autograd.record():
                    loss = (conv(x) ** 2).mean()
                loss.backward()
                trainer.step(4)
        results.append(conv.weight.data().asnumpy())
    np.testing.assert_array_equal(results[0].view(np.int32), results[1].view(np.int32))


@pytest.mark.parametrize('after', ['evaluate', 'regions', 'symbolic evaluate'])
def test_after_evaluation_and_the_pictures_every_convolution_weight_is_in_mxnets_layout(
        op_library, after):
    """Inference-mode forwards leave convolution weights in oneDNN's blocked layout, where
    MXNet's built-in updates race (engine.GluonModel.plain_weights). Observed through the
    external operator, whose output must be in MXNet's layout: it writes into every weight
    (learning rate 0) with no "can't generate TBlob for MKLDNN data"."""
    from stngluon import engine, symbolic
    from stngluon.config import RunConfig
    rng = np.random.RandomState(0)
    x, y = rng.rand(64, 1, 28, 28).astype(np.float32), rng.randint(0, 10, 64)
    config = RunConfig.from_flags(['--optimizer', 'sgd'])
    if after == 'symbolic evaluate':
        model = symbolic.ModuleModel(config, x.shape, mx.cpu())
        model.fit_epoch(1, x, y)
        model.evaluate(x, y)
        arrays = [a for each in model.mod._exec_group.param_arrays for a in each]
    else:
        model = engine.GluonModel(config, x.shape, mx.cpu())
        model.fit_epoch(1, x, y)
        model.evaluate(x, y) if after == 'evaluate' else model.regions(x[:8])
        arrays = [a for p in model.net.collect_params().values() for a in p.list_data()]
    weights = [a for a in arrays if a.ndim > 2]
    assert len(weights) >= 3   # LeNet's two convolutions and the localisation net's
    for w in weights:
        before = w.asnumpy()
        zeros = [mx.nd.zeros(w.shape) for _ in range(3)]
        getattr(mx.nd, optim.OP)(w, *zeros, num_weights=1, lrs='0', wds='0', out=w)
        np.testing.assert_array_equal(w.asnumpy(), before)


@needs_mnist
def test_train_py_without_the_library_trains_the_same_run(op_library, tmp_path):
    """Every operator of the library (the sampler, the standardisation, Adam) against
    MXNet's own: the same metrics and weights."""
    runs = [brief_train_py(REAL_DIR, tmp_path / str(k), STN_OPS_LIBRARY=library)
            for k, library in enumerate((ops.library_path(), str(tmp_path / 'missing.so')))]
    assert [sampler for sampler, _, _ in runs] == ['stn_bilinear_sampler', 'BilinearSampler']
    assert runs[0][1] == runs[1][1]
    for name, value in runs[0][2].items():
        np.testing.assert_array_equal(value.asnumpy(), runs[1][2][name].asnumpy(), err_msg=name)
