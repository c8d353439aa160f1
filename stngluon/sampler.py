"""The bilinear sampler the transformer runs: MXNet's ``BilinearSampler``, or the same
operator with the batch shared out among OpenMP threads (ops/bilinear_sampler.cc).

MXNet 1.9.1's CPU ``BilinearSampler`` is a single-threaded loop over the images. The
library built from ops/bilinear_sampler.cc (``make ops``, or ``python -m stngluon.sampler``; g++
and the headers the mxnet wheel ships) registers ``stn_bilinear_sampler``: the same loop
and arithmetic for each image, so the same bits, with one image per thread at a time.
``use_threaded()`` says whether ``stn.sample`` takes it: where the library is built for
this MXNet, loads, and the process runs MXNet's operators on more than one OpenMP thread
(on one thread the built-in operator is as fast). Anything else, and STN_SAMPLER=builtin,
keeps the built-in operator. Either way the results are identical.

``engine.GluonModel.export`` (what train.py writes) names the built-in operator in the
graph (``portable``), so a model file never needs this library; ``rundir.load_export``
reads any graph that way too (one exported with ``HybridBlock.export`` directly).
"""
import os
import subprocess
import sys

from stngluon import ROOT, atomic, runtime

SOURCE = os.path.join(ROOT, 'ops', 'bilinear_sampler.cc')
OP = 'stn_bilinear_sampler'
_loaded = None   # None: not tried yet; else whether the library is loaded


def library_path():
    """build/libstn_sampler-mxnet<version>.so (a library is built for one MXNet), or
    $STN_SAMPLER_LIBRARY."""
    if os.environ.get('STN_SAMPLER_LIBRARY'):
        return os.path.abspath(os.environ['STN_SAMPLER_LIBRARY'])
    from importlib.metadata import version
    return os.path.join(ROOT, 'build', f'libstn_sampler-mxnet{version("mxnet")}.so')


def build(path=None, compiler='g++'):
    """Compile ops/bilinear_sampler.cc into ``path`` (atomically). Raises RuntimeError
    with the compiler's message if it cannot."""
    import mxnet
    path = path or library_path()
    include = os.path.join(os.path.dirname(mxnet.__file__), 'include')
    lib_api = os.path.join(os.path.dirname(mxnet.__file__), 'src', 'lib_api.cc')

    def compile_to(tmp):
        command = [compiler, '-std=c++11', '-O3', '-fopenmp', '-shared', '-fPIC',
                   f'-I{include}', f'-I{os.path.join(include, "mxnet")}', SOURCE, lib_api,
                   '-o', tmp]
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as e:
            raise RuntimeError(f'{compiler}: {e.strerror}') from None
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-2000:] or f'{compiler} failed')
    atomic.atomic_write(path, compile_to)
    return path


def fresh(path):
    """Whether the library at ``path`` exists and is newer than its source."""
    try:
        return os.path.getmtime(path) >= os.path.getmtime(SOURCE)
    except OSError:
        return False


def load():
    """Load the library once per process; whether it is loaded. A library that is
    missing, older than its source or fails to load is not used (no error)."""
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


def use_threaded():
    """Whether ``stn.sample`` takes the threaded sampler (see the module docstring)."""
    if os.environ.get('STN_SAMPLER', 'auto') == 'builtin' or runtime.threads() < 2:
        return False
    return load()


def name():
    """The operator ``stn.sample`` runs, for a run's header and config.json."""
    return OP if use_threaded() else 'BilinearSampler'


def portable(symbol_json):
    """An exported graph (JSON text) with the threaded sampler's nodes named as MXNet's
    built-in ``BilinearSampler``, which computes the same."""
    return symbol_json.replace(f'"op": "{OP}"', '"op": "BilinearSampler"')


if __name__ == '__main__':
    if fresh(library_path()):
        sys.exit(0)
    try:
        print(f'built {build()}')
    except RuntimeError as e:
        sys.exit(f'error: could not build the threaded sampler ({e}); training uses '
                 f'MXNet\'s BilinearSampler instead')
