"""The repository's layout: scripts (at the root, in benchmarks/ and scripts/) over one
library package, stngluon/, and the model (stn.py, net.py) at the root. Read from the
sources' syntax trees, lazy imports inside functions included."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = {'stn', 'net'}


def module_of(path):
    return os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')


def sources():
    return {module_of(p): p for pattern in ('*.py', 'benchmarks/*.py', 'scripts/*.py',
                                            'stngluon/*.py')
            for p in glob.glob(os.path.join(ROOT, pattern))}


def is_script(path):
    """Whether ``path`` is a command: outside the package, with an ``if __name__ ==
    '__main__':`` block (``python -m stngluon.sampler`` builds a library; it is no script)."""
    return not module_of(path).startswith('stngluon.') and any(isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)
               for node in ast.parse(open(path).read()).body)


def imports(path):
    """The modules ``path`` imports, anywhere in it: 'a.b' for import a.b and for from a import b."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f'{node.module}.{alias.name}' for alias in node.names}
    return names


def test_no_script_imports_another():
    modules = sources()
    scripts = {name for name, path in modules.items() if is_script(path)}
    assert {'train', 'predict', 'visualize', 'reproduce', 'export_onnx',
            'benchmarks.bench_train', 'scripts.launch'} <= scripts
    for name in sorted(scripts):
        assert not imports(modules[name]) & (scripts - {name}), name


def test_the_root_holds_the_commands_and_the_model():
    root = {name for name in sources() if '.' not in name}
    assert root == {'train', 'predict', 'visualize', 'reproduce', 'export_onnx'} | MODEL


def test_the_library_imports_no_script_and_the_model_no_data():
    modules = sources()
    scripts = {name for name, path in modules.items() if is_script(path)}
    for name in [n for n in modules if n.startswith('stngluon.')] + sorted(MODEL):
        assert not imports(modules[name]) & (scripts - {name}), name
    for name in MODEL:
        assert not imports(modules[name]) & {'stngluon.distort', 'stngluon.mnist'}, name
