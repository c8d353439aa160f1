"""Export a run's network to ONNX, transformer included: RUN_DIR/model.onnx.

    python export_onnx.py --model result          # writes result/model.onnx
    python predict.py --model result --runtime onnxruntime --dataset mnist

The converters for the transformer's operators (GridGenerator, BilinearSampler,
SpatialTransformer) and how they map to ONNX's GridSample: stngluon/onnx_export.py.
"""
import argparse
import sys

from stngluon import runtime
runtime.configure()   # OpenMP threads and wait policy, before MXNet loads
from stngluon import rundir  # noqa: E402
from stngluon.onnx_export import OPSET, ConversionError, export  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='result', help='run folder or file prefix of the export')
    p.add_argument('--epoch', type=int, default=None,
                   help='which PREFIX-NNNN.params (default: the newest)')
    p.add_argument('--out', default=None, help='the .onnx file (default: RUN_DIR/model.onnx)')
    args = p.parse_args(argv)
    try:
        path = export(args.model, args.epoch, args.out)
    except (ConversionError, rundir.RunError) as e:
        sys.exit(f'error: {e}')
    except OSError as e:
        sys.exit(f'error: {e.filename or args.out}: {e.strerror or e}; nothing was written')
    print(f'wrote {path} (ONNX opset {OPSET}; check it: python predict.py --model '
          f'{args.model} --runtime onnxruntime --dataset DATASET)')


if __name__ == '__main__':
    main()
