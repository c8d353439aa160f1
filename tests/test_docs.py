"""The documentation's links: every relative link in README.md, results/README.md and
docs/*.md names a file or folder of the repository, and every #anchor a heading of the
page it points to (GitHub's slugs)."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(['README.md', 'results/README.md', 'data/README.md'] +
               [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md'))])
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)')


def slug(heading):
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r'[`*_]|\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(path):
    with open(path) as f:
        text = re.sub(r'```.*?```', '', f.read(), flags=re.S)
    return {slug(line.lstrip('#')) for line in text.splitlines() if line.startswith('#')}


def links(page):
    """The link targets of ``page``, code blocks and code spans left out."""
    with open(page) as f:
        text = re.sub(r'`[^`\n]*`', '', re.sub(r'```.*?```', '', f.read(), flags=re.S))
    return [a or b for a, b in LINK.findall(text)]


def broken_links(page):
    """The relative links of ``page`` (a path) that name no file, or no heading of it."""
    broken = []
    for link in links(page):
        if re.match(r'[a-z]+:', link):   # http(s), mailto: not checked here
            continue
        target, _, anchor = link.partition('#')
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        if not os.path.exists(path):
            broken.append(f'{link}: no such file')
        elif anchor and path.endswith('.md') and anchor not in anchors(path):
            broken.append(f'{link}: no heading #{anchor}')
    return broken


@pytest.mark.parametrize('page', PAGES)
def test_every_relative_link_and_anchor_resolves(page):
    path = os.path.join(ROOT, page)
    assert not broken_links(path), broken_links(path)


def test_a_missing_file_or_heading_is_found(tmp_path):
    (tmp_path / 'a.md').write_text('# Quick start\n\n## The paper\'s `P` set\n')
    page = tmp_path / 'b.md'
    page.write_text('[ok](a.md#quick-start) [ok](a.md#the-papers-p-set) ![pic](a.md)\n'
                    '[gone](c.md) [bad](a.md#speed) `[code](d.md)` [web](https://x.y)\n'
                    '```\n[in a block](e.md)\n```\n')
    assert broken_links(str(page)) == ['c.md: no such file', 'a.md#speed: no heading #speed']


# ---- commands ---------------------------------------------------------------------------

COMMAND = re.compile(r'python3? ([\w/.-]+\.py)((?:[ \t]+(?!python)[^\s|&;#`]+)*)')


def commands():
    """(page, script, its flags) of every ``python SCRIPT.py --flag ...`` the pages show."""
    found = []
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            for match in COMMAND.finditer(f.read()):
                script, rest = match.groups()
                flags = re.findall(r'(?<![\w-])--[a-z0-9][a-z0-9-]*', rest)
                found.append((page, script, flags))
    return found


def test_every_command_the_pages_show_names_a_script_and_flags_it_takes():
    import functools
    import subprocess
    import sys

    @functools.lru_cache(None)
    def options(script):
        done = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f'{script} --help: {done.stderr[-500:]}'
        return set(re.findall(r'--[a-z0-9][a-z0-9-]*', done.stdout))

    shown = commands()
    assert len(shown) > 100
    wrong = [f'{page}: python {script} {flag}' for page, script, flags in shown
             for flag in ([] if not os.path.exists(os.path.join(ROOT, script)) else flags)
             if flag not in options(script)]
    missing = sorted({f'{page}: python {script}' for page, script, _ in shown
                      if not os.path.exists(os.path.join(ROOT, script))})
    assert not wrong and not missing, wrong + missing


# ---- generated and measured numbers -----------------------------------------------------

def block(path, name):
    """The lines between a page's '<!-- NAME: start -->' and '<!-- NAME: end -->' lines."""
    with open(path) as f:
        text = f.read()
    return text.split(f'<!-- {name}: start -->\n')[1].split(f'<!-- {name}: end -->')[0].splitlines()


def test_the_readme_usage_is_train_py_help():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, 'train.py', '--help'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, COLUMNS='100'))
    usage = done.stdout.split('\n\n')[0].splitlines()   # argparse wraps to COLUMNS
    shown = block(os.path.join(ROOT, 'README.md'), 'usage')
    assert shown == ['```', *usage, '```'], '\n'.join(['the README should show:', *usage])


def test_the_readme_table1_is_what_the_committed_runs_give(tmp_path, capsys):
    """reproduce.py --table-only rebuilds the README's block (table and tally) and
    results/table1/table1.md from results/table1 alone, and prints that block."""
    import shutil
    import reproduce
    shutil.copytree(os.path.join(ROOT, 'results', 'table1'), tmp_path / 'results' / 'table1')
    shutil.copy(os.path.join(ROOT, 'README.md'), tmp_path / 'README.md')
    reproduce.main(['--table-only', '--out', str(tmp_path / 'results' / 'table1'),
                    '--readme', str(tmp_path / 'README.md')])
    assert (tmp_path / 'README.md').read_text() == open(os.path.join(ROOT, 'README.md')).read()
    for name in ('table1.md', 'table1.csv'):
        committed = open(os.path.join(ROOT, 'results', 'table1', name)).read()
        assert (tmp_path / 'results' / 'table1' / name).read_text() == committed, name
    printed = capsys.readouterr().out.splitlines()
    assert printed[:-1] == block(os.path.join(ROOT, 'README.md'), 'table1')


def test_reproduce_table_only_with_no_flags_reads_the_committed_grid():
    import reproduce
    args = reproduce.parser().parse_args(['--table-only'])
    assert (args.schedule, args.seeds, args.out) == ('table1', [1, 2, 3], None)
    assert reproduce.label(args) == 'cosine-20ep-fresh-loc1'   # the committed folders' names


def test_the_compositional_tables_are_what_the_committed_runs_give():
    import reproduce
    docs = os.path.join(ROOT, 'docs')
    assert block(os.path.join(docs, 'icstn.md'), 'compositional') == \
        reproduce.compositional_table(docs)
    assert block(os.path.join(ROOT, 'README.md'), 'compositional') == \
        reproduce.compositional_summary()


def test_the_readme_appendix_table_is_what_the_committed_runs_give():
    import reproduce
    assert block(os.path.join(ROOT, 'README.md'), 'appendix') == reproduce.appendix_tables(ROOT)


def test_the_quick_starts_accuracy_is_the_committed_default_runs():
    import csv
    with open(os.path.join(ROOT, 'results', 'mnist', 'default-seed1', 'metrics.csv')) as f:
        last = list(csv.DictReader(f))[-1]
    with open(os.path.join(ROOT, 'results', 'mnist', 'default-seed1', 'config.json')) as f:
        import json
        config = json.load(f)
    assert (config['dataset'], config['epochs'], int(last['epoch'])) == ('mnist', 20, 20)
    with open(os.path.join(ROOT, 'README.md')) as f:
        quick_start = f.read().split('## Quick start')[1].split('\n## ')[0]
    assert f'**{100 * float(last["test_acc"]):.2f}%**' in quick_start


def test_the_speed_tables_are_the_committed_benchmark_output():
    """README's and docs/speed.md's speed tables are what benchmarks/speed_tables.py makes
    of docs/bench_train.txt: every Table 1 model kind on 1 and 2 cores."""
    from benchmarks import speed_tables
    with open(speed_tables.OUTPUT) as f:
        rows, side, _, _ = speed_tables.parse(f.read())
    assert {(r['name'], r['cores']) for r in rows} == {(n, c) for n in speed_tables.NAMES for c in '12'}
    assert [s['name'] for s in side] == list(speed_tables.NAMES)
    speed_tables.main(['--check'])   # exits (fails) where a table is not the output's


def test_a_table_that_is_not_the_outputs_is_found(tmp_path, monkeypatch):
    from benchmarks import speed_tables
    readme = tmp_path / 'README.md'
    with open(speed_tables.README) as f:
        readme.write_text(f.read().replace('| TC CNN | ', '| TC CNN | 9.99 / ', 1))
    monkeypatch.setattr(speed_tables, 'README', str(readme))
    with pytest.raises(SystemExit, match='README.md'):
        speed_tables.main(['--check'])


def test_every_test_file_is_in_the_testing_page():
    page = open(os.path.join(ROOT, 'docs', 'testing.md')).read()
    missing = [os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'tests', 'test_*.py'))
               if f'`{os.path.basename(p)}`' not in page]
    assert not missing


def test_the_readmes_model_snippet_runs():
    with open(os.path.join(ROOT, 'README.md')) as f:
        snippets = re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)
    code = next(s for s in snippets if 'net.build' in s)
    scope = {}
    exec(compile(code, 'README.md', 'exec'), scope)
    assert scope['logits'].shape == (8, 10)


def test_the_readmes_set_table_is_what_distort_makes():
    from stngluon import distort
    def size(name):
        channels, height, width = distort.image_shape(name)
        return f'{height}x{width}' if channels == 1 else f'{channels}x{height}x{width}'
    expected = ['| set | size | distortion |', '|---|---|---|'] + [
        f'| `{n}` | {size(n)} | {distort.describe(n)} |' for n in ('r', 'rts', 'p', 'e', 'tc', 'addition')]
    assert block(os.path.join(ROOT, 'README.md'), 'sets') == expected, '\n'.join(expected)
