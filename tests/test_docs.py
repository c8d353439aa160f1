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
