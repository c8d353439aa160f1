"""Write the speed tables of README.md and docs/speed.md from the committed benchmark output.

    python benchmarks/bench_train.py --side-by-side > docs/bench_train.txt
    python benchmarks/speed_tables.py          # rewrites the tables from docs/bench_train.txt
    python benchmarks/speed_tables.py --check  # exit 1 if a table is not the output's

The tables are the output's numbers, never typed by hand: README's ratios by model kind,
docs/speed.md's rows in full and its side-by-side table. The prose around them (the host,
the date, what the run shows) is written by hand.
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, 'docs', 'bench_train.txt')
README = os.path.join(ROOT, 'README.md')
SPEED = os.path.join(ROOT, 'docs', 'speed.md')

NAMES = {'default': 'STN + LeNet, MNIST 28x28 (`python train.py`)', 'rts-fcn': 'RTS FCN, 42x42',
         'rts-st-fcn-affine': 'RTS ST-FCN affine', 'rts-cnn': 'RTS CNN',
         'rts-st-cnn-affine': 'RTS ST-CNN affine', 'rts-st-cnn-attention': 'RTS ST-CNN attention',
         'rts-st-cnn-projective': 'RTS ST-CNN projective', 'rts-st-cnn-tps': 'RTS ST-CNN TPS',
         'tc-cnn': 'TC CNN, 60x60'}
# README's rows: the model kinds a row gives the ratios of, ' / ' between them
README_ROWS = [('STN + LeNet, MNIST (`python train.py`)', ['default']),
               ('RTS FCN / ST-FCN affine', ['rts-fcn', 'rts-st-fcn-affine']),
               ('RTS CNN / ST-CNN affine', ['rts-cnn', 'rts-st-cnn-affine']),
               ('RTS ST-CNN attention / projective / TPS',
                ['rts-st-cnn-attention', 'rts-st-cnn-projective', 'rts-st-cnn-tps']),
               ('TC CNN', ['tc-cnn'])]
ROW = re.compile(r'(?P<name>[a-z][\w-]+)\s+(?P<cores>\d)\s+(?P<settings>\w+ \w+(?: x\d+)?)\s+'
                 r'(?P<ours>[\d,]+) \(\s*(?P<ours_mb>\d+)\)\s+(?P<loop>[\d,]+)\s+(?P<per_step>[\d.]+)'
                 r'\s+(?P<torch>[\d,]+) \(\s*(?P<torch_mb>\d+)\)\s+(?P<ratio>[\d.]+)\s+(?P<range>[\d.]+-[\d.]+)$')
SIDE = re.compile(r'(?P<name>[a-z][\w-]+)\s+(?P<side>[\d,]+) against\s+(?P<one>[\d,]+): (?P<ratio>[\d.]+)x$')


def parse(text):
    """(rows: [dict] of the main table, side: [dict] of the side-by-side one, the workloads
    whose classifier ran in bfloat16, PyTorch's version 'X.Y')."""
    rows = [m.groupdict() for m in map(ROW.match, text.splitlines()) if m]
    side = [m.groupdict() for m in map(SIDE.match, text.splitlines()) if m]
    bf16 = re.search(r'classifier in bfloat16 [^:]*: (.*?);', text)
    torch = re.search(r'PyTorch (\d+\.\d+)', text)
    return rows, side, set(bf16.group(1).split(', ')) if bf16 else set(), torch.group(1) if torch else '?'


def label(name, bf16):
    return NAMES[name] + (' (bfloat16 here)' if name in bf16 else '')


def readme_table(rows):
    ratio = {(r['name'], r['cores']): r['ratio'] for r in rows}
    lines = ['| network | 1 core | 2 cores |', '|---|---|---|']
    for title, names in README_ROWS:
        cells = [' / '.join(ratio[n, cores] for n in names) for cores in '12']
        lines.append(f'| {title} | {cells[0]} | {cells[1]} |')
    return lines


def speed_tables(rows, side, bf16, torch):
    main = [f'| network | cores | settings | stn-gluon | train.py loop | loop / step | PyTorch {torch} | ratio |',
            '|---|---|---|---|---|---|---|---|']
    for r in rows:
        first = r['cores'] == '1'
        main.append(f"| {label(r['name'], bf16) if first else ''} | {r['cores']} | {r['settings']} | "
                    f"{r['ours']} ({r['ours_mb']} MB) | {r['loop']} | {r['per_step']} | "
                    f"{r['torch']} ({r['torch_mb']} MB) | **{r['ratio']}** ({r['range']}) |")
    pairs = ['| network | 2 one-thread processes | 1 process on 2 cores | ratio |', '|---|---|---|---|']
    pairs += [f"| {label(s['name'], bf16)} | {s['side']} | {s['one']} | {s['ratio']} |" for s in side]
    return main, pairs


def replace_table(text, header_start, lines):
    """``text`` with the table whose header line starts with ``header_start`` replaced."""
    found = text.split('\n')
    start = next(k for k, line in enumerate(found) if line.startswith(header_start))
    end = start
    while end < len(found) and found[end].startswith('|'):
        end += 1
    return '\n'.join(found[:start] + lines + found[end:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--check', action='store_true', help='only say whether the tables are the output\'s')
    args = p.parse_args(argv)
    with open(OUTPUT) as f:
        rows, side, bf16, torch = parse(f.read())
    if not rows:
        sys.exit(f'error: no table rows in {OUTPUT}: is it bench_train.py\'s output?')
    main_table, pairs = speed_tables(rows, side, bf16, torch)
    stale = []
    for path, tables in ((README, [('| network | 1 core |', readme_table(rows))]),
                         (SPEED, [('| network | cores | settings |', main_table),
                                  ('| network | 2 one-thread processes |', pairs)])):
        with open(path) as f:
            text = f.read()
        new = text
        for header, lines in tables:
            new = replace_table(new, header, lines)
        if new != text:
            stale.append(os.path.relpath(path, ROOT))
            if not args.check:
                with open(path, 'w') as f:
                    f.write(new)
    if args.check and stale:
        sys.exit(f'not the output\'s tables: {", ".join(stale)} (python benchmarks/speed_tables.py)')
    print(f'{"stale" if args.check else "rewritten"}: {", ".join(stale) or "none"}')


if __name__ == '__main__':
    main()
