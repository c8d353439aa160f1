"""colocalise.py (appendix A.2): the canvases and their boxes, the triplet hinge loss, the
crop boxes and the IoU metric, and a transformer that learns to find a digit without labels."""
import json

import mxnet as mx
from mxnet import autograd
import numpy as np
import pytest

from scripts import colocalise
from net import Net


def squares(n, seed=0):
    """(n, 1, 28, 28) stand-in digits: a filled 14x14 square in the middle of the frame."""
    digits = np.zeros((n, 1, 28, 28), np.float32)
    digits[:, :, 7:21, 7:21] = 1
    return digits


def test_the_triplet_loss_is_zero_when_the_pair_is_closer_than_the_random_patch_by_the_margin():
    a = mx.nd.array([[0., 0.], [0., 0.]])
    same = a.copy()
    far = mx.nd.array([[1., 0.], [2., 0.]])           # squared distances 1 (= margin) and 4
    np.testing.assert_allclose(colocalise.triplet_loss(a, same, far).asnumpy(), [0, 0])


def test_the_triplet_loss_is_positive_otherwise_and_grows_with_the_pair_distance():
    a = mx.nd.array([[0., 0.], [0., 0.], [0., 0.]])
    positive = mx.nd.array([[0., 0.], [1., 0.], [3., 0.]])
    negative = mx.nd.array([[0.5, 0.], [0.5, 0.], [0.5, 0.]])     # squared distance 0.25
    loss = colocalise.triplet_loss(a, positive, negative).asnumpy()
    np.testing.assert_allclose(loss, [0.75, 1.75, 9.75])
    assert colocalise.triplet_loss(a, positive, negative, margin=0.5).asnumpy()[0] == 0.25


@pytest.mark.parametrize('a, b, expected', [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),           # the same box
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),      # half overlapping
    ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),          # touching
    ([0, 0, 10, 10], [2, 2, 7, 7], 25 / 100),        # one inside the other
    ([0, 0, 10, 10], [30, 30, 40, 40], 0.0),         # apart
])
def test_iou_on_hand_made_boxes(a, b, expected):
    assert colocalise.iou([a], [b])[0] == pytest.approx(expected)


def test_a_crop_box_is_the_region_its_pixels_read():
    # A native-resolution crop at the centre reads the 28x28 pixels around it; the identity
    # reads the whole 84x84 canvas: its 28 output pixels, 83/27 input pixels apart, reach
    # half an output pixel beyond the corner pixels' centres.
    whole, native = colocalise.crop_boxes([[1, 0, 0], [27 / 83, 0, 0]])
    half = 41.5 + 83 / 27 / 2
    np.testing.assert_allclose(whole, [42 - half, 42 - half, 42 + half, 42 + half], atol=1e-9)
    np.testing.assert_allclose(native, [28, 28, 56, 56], atol=1e-9)
    theta = colocalise.random_patches(200, np.random.default_rng(0))
    boxes = colocalise.crop_boxes(theta)
    np.testing.assert_allclose(boxes[:, 2:] - boxes[:, :2], 28, atol=1e-9)
    assert boxes.min() >= -1e-9 and boxes.max() <= 84 + 1e-9


@pytest.mark.parametrize('clutter', [0, 16])
def test_each_canvas_holds_its_whole_digit_inside_its_box(clutter):
    digits = squares(50)
    others = np.random.RandomState(1).rand(20, 1, 28, 28).astype(np.float32)
    images, boxes = colocalise.canvases(digits, others, np.random.default_rng(0), clutter)
    assert images.shape == (50, 1, 84, 84) and boxes.shape == (50, 4)
    for image, (x0, y0, x1, y1) in zip(images[:, 0], boxes.astype(int)):
        assert x1 - x0 == 28 and y1 - y0 == 28 and 0 <= x0 and x1 <= 84
        assert (image[y0 + 7:y0 + 21, x0 + 7:x0 + 21] == 1).all()    # the digit, whole
    ink_outside = images.sum() - 50 * 14 * 14
    assert (ink_outside > 0) == (clutter > 0)
    assert len({tuple(b) for b in boxes}) > 40                        # the place varies


def exported_encoder(folder):
    """A random MNIST CNN exported as train.py does: a stand-in for the trained encoder."""
    mx.random.seed(0)
    cnn = Net(model='cnn', transform='none', width=8)
    cnn.initialize(mx.init.Xavier())
    cnn.hybridize()
    cnn(mx.nd.zeros((1, 1, 28, 28)))
    cnn.export(str(folder / 'model'), epoch=1)
    return colocalise.load_encoder(str(folder))


def test_the_encoder_concatenates_the_cnns_two_stages_and_logits(tmp_path):
    encoder = exported_encoder(tmp_path)
    encoder, side = encoder
    embedding = encoder(mx.nd.zeros((3, 1, 28, 28)))
    assert embedding.shape == (3, 8 * 10 * 10 + 16 * 4 * 4 + 10)
    assert all(p.grad_req == 'null' for p in encoder.collect_params().values())   # frozen
    assert side == 28                                                # the crops it reads


def test_the_transformer_starts_as_the_whole_canvas_and_its_loss_falls(tmp_path):
    encoder, side = exported_encoder(tmp_path)
    digits = squares(20)
    images, truth = colocalise.canvases(digits, digits, np.random.default_rng(0))
    fresh = colocalise.transformer()
    fresh.initialize()
    np.testing.assert_allclose(colocalise.found_boxes(fresh, images[:2]),
                               colocalise.crop_boxes([[1, 0, 0]] * 2), atol=1e-6)
    stn, losses, _ = colocalise.colocalise(images, encoder, steps=60, batch=8)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


@pytest.mark.parametrize('side', [28, 42])
def test_the_crop_of_a_digits_box_is_the_digit_at_the_encoders_side(side):
    digits = np.random.RandomState(0).rand(6, 1, 28, 28).astype(np.float32)
    images, boxes = colocalise.canvases(digits, digits, np.random.default_rng(0))
    theta = colocalise.box_theta(boxes, size=side)
    np.testing.assert_allclose(colocalise.crop_boxes(theta, size=side), boxes, atol=1e-4)
    crops = colocalise.attention_crop(mx.nd.array(images), mx.nd.array(theta), side).asnumpy()
    assert crops.shape == (6, 1, side, side)
    if side == 28:                                      # native resolution: pixel for pixel
        np.testing.assert_allclose(crops, digits, atol=1e-4)
    patches = colocalise.crop_boxes(colocalise.random_patches(100, np.random.default_rng(0),
                                                              size=side), size=side)
    np.testing.assert_allclose(patches[:, 2:] - patches[:, :2], 28, atol=1e-4)   # digit-sized


def test_the_logits_embedding_can_be_normalised_to_unit_length(tmp_path):
    exported_encoder(tmp_path)
    encoder, side = colocalise.load_encoder(str(tmp_path), embedding='logits', normalise=True)
    embedding = encoder(mx.nd.random.uniform(shape=(4, 1, 28, 28))).asnumpy()
    assert embedding.shape == (4, 10)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1, rtol=1e-5)


def test_the_landscape_prices_every_crop_place_and_prefers_the_digit_for_a_pixel_encoder():
    # Identical digits and an encoder that is the pixels themselves: the digit's own box
    # gives identical crops far from most random patches (loss 0); an empty crop is as
    # close to an empty patch as to the other empty crops (loss about the margin).
    images, boxes = colocalise.canvases(squares(40), squares(40), np.random.default_rng(0))
    pixels = lambda crops: crops.reshape((crops.shape[0], -1))             # noqa: E731
    losses = colocalise.landscape(images, boxes, pixels)
    assert list(losses) == ['digit box', 'box +-4 px', 'box +-12 px', 'canvas centre',
                            'empty (off the canvas)', 'whole canvas', 'zoomed out 3x']
    assert losses['digit box'] == min(losses.values()) and losses['digit box'] < 0.05
    assert 0.2 < losses['empty (off the canvas)'] <= 1
    # random patches cut from other canvases (all ink): an empty crop is now far from them
    elsewhere = colocalise.landscape(images, boxes, pixels, negatives=np.ones_like(images))
    assert elsewhere['empty (off the canvas)'] == 0


def test_the_first_step_leads_toward_the_digit_when_the_encoder_rewards_ink_in_the_middle():
    # Each image twice (so the pair agrees) and an encoder whose embedding is the ink in
    # the crop's middle: the random patch, mostly empty, pushes a crop beside its digit
    # onto it.
    images, boxes = colocalise.canvases(squares(10), squares(10), np.random.default_rng(0))
    middle = lambda crops: crops[:, :, 7:21, 7:21].mean(axis=(2, 3))       # noqa: E731
    beside = colocalise.box_theta(boxes + 6)
    share = [colocalise.toward_digit(images[[i, i]], boxes[[i, i]], middle, beside[i])
             for i in range(10)]
    assert np.mean(share) == 1


def test_the_default_curriculum_is_the_paper_as_written():
    plain = colocalise.Curriculum()
    assert [(plain.sigma(t), plain.max_scale(t), plain.coarse(t)) for t in (0, 500)] == \
        [(0.0, None, False)] * 2


def test_the_curriculum_blurs_then_sharpens_shrinks_the_crop_to_a_digit_and_switches_encoder():
    c = colocalise.Curriculum(blur=6, blur_steps=100, shrink=(200, 300), switch=250)
    assert [c.sigma(t) for t in (0, 50, 100, 400)] == [6, 3, 0, 0]
    digit = colocalise.digit_scale()
    assert c.max_scale(199) is None and c.max_scale(200) == 1
    assert c.max_scale(250) == pytest.approx((1 + digit) / 2)
    assert c.max_scale(300) == c.max_scale(999) == pytest.approx(digit)
    assert [c.coarse(t) for t in (0, 249, 250)] == [True, True, False]


def test_blur_spreads_the_ink_and_keeps_its_peak():
    image = np.zeros((1, 1, 84, 84), np.float32)
    image[0, 0, 40, 40] = 1
    sharp = colocalise.blur(mx.nd.array(image), 0).asnumpy()
    np.testing.assert_array_equal(sharp, image)
    soft = colocalise.blur(mx.nd.array(image), 6).asnumpy()[0, 0]
    assert soft.max() == pytest.approx(1) and soft[40, 40] == soft.max()
    assert soft[40, 46] == pytest.approx(np.exp(-0.5), rel=1e-3)      # one sigma away
    assert soft[40, 46] == pytest.approx(soft[46, 40], rel=1e-5)      # round


def test_a_capped_crop_is_at_most_a_digits_size():
    images, _ = colocalise.canvases(squares(4), squares(4), np.random.default_rng(0))
    fresh = colocalise.transformer()
    fresh.initialize()                                           # the whole canvas, s = 1
    boxes = colocalise.found_boxes(fresh, images, colocalise.digit_scale())
    np.testing.assert_allclose(boxes[:, 2:] - boxes[:, :2], 28, atol=1e-3)
    np.testing.assert_allclose((boxes[:, 2:] + boxes[:, :2]) / 2, 42, atol=1e-3)


def test_the_cap_bounds_the_size_of_a_turned_crop_too():
    theta = mx.nd.array([[4.4, 0.1, 0.2], [-4.4, 0.1, 0.2], [-0.2, 0.3, 0.4], [0.5, 0, 0]])
    np.testing.assert_allclose(colocalise.capped(theta, 0.5).asnumpy(),
                               [[0.5, 0.1, 0.2], [-0.5, 0.1, 0.2], [-0.2, 0.3, 0.4], [0.5, 0, 0]])
    assert colocalise.capped(theta, None) is theta


def test_a_curriculum_run_trains_with_both_encoders_and_records_its_overlap():
    images, truth = colocalise.canvases(squares(12), squares(12), np.random.default_rng(0))
    seen = []

    def encoder(name):
        def embed(crops):
            seen.append((name, crops.shape[-1]))
            return crops.reshape((crops.shape[0], -1))
        return embed
    curriculum = colocalise.Curriculum(blur=4, blur_steps=4, shrink=(4, 8), switch=6)
    stn, losses, history = colocalise.colocalise(
        images, encoder('fine'), steps=10, batch=4, curriculum=curriculum,
        coarse=(encoder('coarse'), 42), every=5, truth=truth)
    assert len(losses) == 10 and np.isfinite(losses).all()
    assert {shape for name, shape in seen if name == 'coarse'} == {42}
    assert {shape for name, shape in seen if name == 'fine'} == {28}
    assert [row[0] for row in history] == [0, 5, 9]
    assert all(0 <= share <= 1 and 0 <= mean <= 1 for _, share, mean in history)


def test_sharp_negatives_are_cut_from_the_unblurred_canvas_while_the_crops_see_the_blur():
    stripes = np.zeros((8, 1, 84, 84), np.float32)
    stripes[..., (np.arange(84) // 8) % 2 == 0] = 1             # 8 px stripes: blur greys them

    def contrast(sharp_negatives):
        negatives, crops = [], []

        def encoder(batch):
            (crops if autograd.is_recording() else negatives).append(batch.asnumpy().std())
            return batch.reshape((batch.shape[0], -1))
        colocalise.colocalise(stripes, encoder, steps=3, batch=4, curriculum=colocalise.Curriculum(
            blur=6, blur_steps=100, sharp_negatives=sharp_negatives))
        return np.mean(negatives), np.mean(crops)
    blurred, sharp = contrast(False), contrast(True)
    assert sharp[0] > 0.4 > 0.2 > blurred[0]                    # the negatives: sharp or not
    assert sharp[1] == pytest.approx(blurred[1]) and sharp[1] < 0.2   # the crops: blurred in both


@pytest.mark.parametrize('flags, message', [
    (['--shrink', '5,3'], '--shrink A,B needs'),
    (['--shrink', 'a,b'], 'comma-separated integers'),
    (['--blur', '6'], '--blur needs'),
    (['--switch', '10'], '--coarse-encoder and --switch go together'),
    (['--classes', '3,12'], 'digit classes are 0-9'),
    (['--blur', 'nan', '--blur-steps', '5'], '--blur needs'),
    (['--steps', '0'], "--steps: '0' must be a finite number > 0"),
    (['--lr', 'inf'], "--lr: 'inf' must be a finite number > 0"),
    (['--images', '1'], '--images: 1 is too few'),
    (['--seed', '-1'], '--seed: -1 must be between 0 and 2**32 - 1'),
    (['--out', __file__], 'is a file, not a folder'),
])
def test_bad_curriculum_flags_are_refused_before_anything_loads(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        colocalise.main(['--encoder', 'no/such/run', *flags])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_run_writes_each_class_as_it_finishes_and_a_rerun_keeps_them(tmp_path, monkeypatch,
                                                                        capsys):
    (tmp_path / 'encoder').mkdir()
    exported_encoder(tmp_path / 'encoder')
    digits, labels = squares(20), np.repeat([3, 5], 10)
    monkeypatch.setattr(colocalise.mnist, 'load_mnist', lambda data_dir=None: (None, None,
                                                                               digits, labels))
    out = tmp_path / 'run'
    flags = ['--encoder', str(tmp_path / 'encoder'), '--images', '10', '--out', str(out)]
    train = colocalise.colocalise

    def interrupted_at_5(images, *args, **kwargs):
        if len(interrupted_at_5.calls) == 1:
            raise KeyboardInterrupt
        interrupted_at_5.calls.append(1)
        return train(images, *args, **kwargs)
    interrupted_at_5.calls = []
    monkeypatch.setattr(colocalise, 'colocalise', interrupted_at_5)
    with pytest.raises(SystemExit) as interrupted:
        colocalise.main(flags + ['--steps', '3', '--classes', '3,5'])
    assert interrupted.value.code == (f'\ninterrupted: the classes finished so far are in '
                                      f'{out / "result.json"}; the same command continues with '
                                      f'the others')
    first = json.loads((out / 'result.json').read_text())
    assert list(first['per_class']) == ['3'] and len(first['per_class']['3']['boxes']) == 10

    monkeypatch.setattr(colocalise, 'colocalise', train)
    colocalise.main(flags + ['--steps', '3', '--classes', '3,5'])
    assert 'class 3: kept from' in capsys.readouterr().out
    second = json.loads((out / 'result.json').read_text())
    assert second['per_class']['3'] == first['per_class']['3'] and '5' in second['per_class']
    assert second['mean'] == np.mean([c['iou_above_0.5'] for c in second['per_class'].values()])
    assert (out / 'boxes.png').stat().st_size > 0

    with pytest.raises(SystemExit, match=r'other settings \(steps\)'):
        colocalise.main(flags + ['--steps', '4', '--classes', '3'])
    assert json.loads((out / 'result.json').read_text()) == second       # untouched

    colocalise.main(flags + ['--steps', '3', '--classes', '5'])             # a subset
    assert list(json.loads((out / 'result.json').read_text())['per_class']) == ['3', '5']

    older = json.loads((out / 'result.json').read_text())      # from before --sharp-negatives
    del older['settings']['sharp_negatives']
    (out / 'result.json').write_text(json.dumps(older))
    colocalise.main(flags + ['--steps', '3', '--classes', '3'])             # still the same run
    with pytest.raises(SystemExit, match=r'other settings \(sharp_negatives\)'):
        colocalise.main(flags + ['--steps', '3', '--classes', '3', '--sharp-negatives'])


@pytest.mark.parametrize('text', ['[1, 2]', '{"settings": [1]}', '"done"'])
def test_a_result_json_that_is_not_a_colocalisation_result_is_one_line(tmp_path, monkeypatch,
                                                                       text):
    (tmp_path / 'encoder').mkdir()
    exported_encoder(tmp_path / 'encoder')
    monkeypatch.setattr(colocalise.mnist, 'load_mnist', lambda data_dir=None: (
        None, None, squares(20), np.repeat([3, 5], 10)))
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'result.json').write_text(text)
    with pytest.raises(SystemExit) as error:
        colocalise.main(['--encoder', str(tmp_path / 'encoder'), '--images', '10', '--steps', '3',
                         '--classes', '3', '--out', str(tmp_path / 'run')])
    assert error.value.code.startswith('error: ') and 'is not a co-localisation result' in \
        error.value.code
    assert (tmp_path / 'run' / 'result.json').read_text() == text   # untouched
