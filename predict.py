"""Classify images, or score a test set, with an exported network and no model code.

    python predict.py --model result digit.png other.jpg     # a class per image
    python predict.py --model result --dataset mnist          # accuracy on a test set
    python predict.py --model result --loader module ...      # through mx.mod.Module
    python predict.py --model result --runtime onnxruntime --dataset mnist   # model.onnx

--model is a run folder (or a file prefix) holding PREFIX-symbol.json and
PREFIX-NNNN.params, as train.py writes for either API (--api gluon or symbol). The
network is loaded with ``gluon.SymbolBlock.imports`` (--loader gluon) or with
``mx.mod.Module.load`` (--loader module); nothing of net.py, stn.py or symbolic.py is
used. --runtime onnxruntime runs RUN_DIR/model.onnx (export_onnx.py, or train.py --onnx)
in ONNX Runtime instead, without importing MXNet at all. Image files of any size are
read as grayscale, resized to the network's input and scaled to [0, 1]; a mostly bright
image is inverted, since the network was trained on white digits on a black background.
"""
import argparse
import os
import sys
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from stngluon import distort, mnist, rundir, runtime   # data and run folders: no model code


class ModelError(RuntimeError):
    """The exported files are missing, corrupt or do not fit together."""


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def load(model, epoch=None, loader='gluon'):
    """A function images (N, 1, H, W) -> class probabilities (N, K), and the input shape
    (C, H, W). ``loader``: 'gluon', 'module' (MXNet) or 'onnxruntime' (``load_onnx``)."""
    if loader == 'onnxruntime':
        return load_onnx(model)
    from stngluon import compat  # noqa: F401  (the numpy shim, before mxnet)
    import mxnet as mx
    from mxnet import gluon
    symbol, weights, symbol_file, params_file = rundir.load_export(model, epoch)
    shape = rundir.input_shape(symbol, weights, os.path.dirname(symbol_file))
    if loader == 'gluon':
        with warnings.catch_warnings():   # "Cannot decide type for ... data": it is float32
            warnings.simplefilter('ignore', UserWarning)
            net = gluon.SymbolBlock.imports(symbol_file, ['data'], params_file)
        return lambda x: mx.nd.softmax(net(mx.nd.array(x))).asnumpy(), shape
    arg_params = {n: weights[n] for n in symbol.list_arguments() if n in weights}
    aux_params = {n: weights[n] for n in symbol.list_auxiliary_states() if n in weights}
    module = mx.mod.Module(mx.sym.softmax(symbol), label_names=None, context=mx.cpu())
    module.bind(data_shapes=[('data', (1, *shape))], for_training=False)
    module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)

    def predict(x):
        return module.predict(mx.io.NDArrayIter(x, batch_size=min(len(x), 1000))).asnumpy()
    return predict, shape


def load_onnx(model, batch_size=1000):
    """``load`` for RUN_DIR/model.onnx (or an .onnx file) in ONNX Runtime: the logits are
    the model's first output."""
    path = os.path.join(model, rundir.ONNX) if os.path.isdir(model) else model
    if not os.path.isfile(path):
        raise ModelError(f'{path} not found: write it with python export_onnx.py --model {model}')
    try:
        import onnxruntime
    except ImportError:
        raise ModelError('--runtime onnxruntime needs the onnxruntime package: pip install -r '
                         'requirements.txt') from None
    try:
        session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    except Exception as e:   # ONNX Runtime raises its own Fail / InvalidProtobuf errors
        raise ModelError(f'{path} is not a loadable ONNX model ({str(e).strip()[:200]}): write '
                         f'it again with python export_onnx.py --model RUN_DIR') from None
    made_from = session.get_modelmeta().custom_metadata_map.get(rundir.ONNX_WEIGHTS)
    if os.path.isdir(model) and made_from:
        newest = os.path.basename(rundir.model_files(model)[1])
        if made_from != newest:
            raise ModelError(f'{path} was made from {made_from}, but the run\'s newest export is '
                             f'{newest} (the run went on since): write it again with python '
                             f'export_onnx.py --model {model}')
    data = session.get_inputs()[0]
    shape = tuple(data.shape[1:])

    def predict(x):
        return np.concatenate([softmax(session.run(None, {data.name: x[i:i + batch_size]})[0])
                               for i in range(0, len(x), batch_size)])
    return predict, shape


def flatten(image):
    """A PIL image as grayscale ('L'). One with transparency is composited onto white or
    black, whichever contrasts with what is drawn on it (its alpha-weighted mean
    brightness): a digit drawn only in the alpha channel stays visible."""
    if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
        rgba = np.asarray(image.convert('RGBA'), np.float32) / 255
        alpha, gray = rgba[..., 3], rgba[..., :3] @ np.float32([0.299, 0.587, 0.114])
        drawn = (gray * alpha).sum() / max(alpha.sum(), 1e-6)
        background = 0.0 if drawn > 0.5 else 1.0
        return Image.fromarray(np.round(255 * (gray * alpha + background * (1 - alpha)))
                               .astype(np.uint8))
    return image.convert('L')


def read_image(path, shape):
    """An image file as (1, H, W) float32 in [0, 1], white on black. Images of more than
    Pillow's ``Image.MAX_IMAGE_PIXELS`` pixels are refused."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():   # Pillow warns above its limit; refused below
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            if image.width * image.height > limit:
                raise Image.DecompressionBombError(f'{image.width}x{image.height} pixels')
            image = flatten(image).resize(shape[:0:-1], Image.BILINEAR)
    except Image.DecompressionBombError as e:
        raise ModelError(f'{path}: too large ({e}); this reads images of at most {limit:,d} '
                         f'pixels: scale it down') from None
    except (OSError, UnidentifiedImageError) as e:
        raise ModelError(f'{path}: not a readable image ({e})') from e
    pixels = np.asarray(image, np.float32) / 255
    if pixels.mean() > 0.5:
        pixels = 1 - pixels
    return pixels[None]


def describe(shape):
    """'42x42 images', '2-channel 42x42 images'."""
    return (f'{shape[0]}-channel ' if shape[0] != 1 else '') + f'{shape[1]}x{shape[2]} images'


def main(argv=None):
    runtime.configure()   # OpenMP threads and wait policy, before MXNet loads (in load)
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('images', nargs='*', help='PNG/JPEG files to classify')
    p.add_argument('--model', default='result', help='run folder or file prefix of the export')
    p.add_argument('--epoch', type=int, default=None, help='which PREFIX-NNNN.params (default: newest)')
    p.add_argument('--loader', choices=['gluon', 'module'], default='gluon',
                   help='gluon.SymbolBlock.imports or mx.mod.Module')
    p.add_argument('--runtime', choices=['mxnet', 'onnxruntime'], default='mxnet',
                   help='MXNet with --loader, or ONNX Runtime on RUN_DIR/model.onnx (no MXNet)')
    p.add_argument('--dataset', choices=distort.DATASETS, default=None,
                   help='report the accuracy on this test set')
    p.add_argument('--data-seed', type=int, default=0)
    p.add_argument('--data-dir', default=None, help='MNIST folder (default: $MNIST_DIR, else data/mnist)')
    args = p.parse_args(argv)
    if args.runtime == 'onnxruntime' and args.epoch is not None:
        p.error('--epoch picks among MXNet exports; model.onnx holds one set of weights '
                '(export_onnx.py --epoch N writes another)')
    if not args.images and not args.dataset:
        p.error('give image files to classify, or --dataset NAME to score a test set')
    try:
        predict, shape = load(args.model, args.epoch,
                              'onnxruntime' if args.runtime == 'onnxruntime' else args.loader)
        if args.dataset:
            wanted = distort.image_shape(args.dataset)
            if wanted != shape:
                raise ModelError(f'the model takes {describe(shape)} but {args.dataset} has '
                                 f'{describe(wanted)}: pick the dataset it was trained on')
            data = distort.load_dataset(args.dataset, args.data_dir, args.data_seed)
            x, y = data.test_x, data.test_y
            correct = int((predict(x).argmax(1) == y).sum())
            print(f'{args.dataset} test accuracy: {correct / len(y):.4f} ({correct}/{len(y)})')
        if args.images and shape[0] != 1:
            raise ModelError(f'the model takes {describe(shape)} (MNIST addition: one digit per '
                             f'channel), and an image file holds one: score it on its test set '
                             f'with --dataset addition')
        for path in args.images:
            probs = predict(read_image(path, shape)[None])[0]
            print(f'{path}: {probs.argmax()} (p = {probs.max():.3f})')
    except (ModelError, rundir.RunError, mnist.MNISTError) as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    main()
