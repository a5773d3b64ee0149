"""Plot `bench_batching.py` tables as an SVG line chart (no plotting library needed).

    .venv/bin/python bench/bench_batching.py ... > out.txt
    .venv/bin/python bench/plot_batching.py out.txt "title" docs/images/batching.svg
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

W, H, PAD = 520, 300, 48
COLOURS = {"one at a time": "#9aa0a6", "batched": "#d9480f"}


def read_table(text: str) -> list[tuple[int, float, float]]:
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|", text, flags=re.M)
    return [(int(n), float(a), float(b)) for n, a, b in rows]


def svg(rows: list[tuple[int, float, float]], title: str) -> str:
    xs = [n for n, _, _ in rows]
    top = max(max(a, b) for _, a, b in rows) * 1.1
    def x(i: int) -> float:
        return PAD + i * (W - 2 * PAD) / max(len(xs) - 1, 1)

    def y(v: float) -> float:
        return H - PAD - v / top * (H - 2 * PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="black"/>',
             f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle">concurrent jobs</text>',
             f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">images/s</text>']
    for i, n in enumerate(xs):
        parts.append(f'<text x="{x(i)}" y="{H - PAD + 16}" text-anchor="middle">{n}</text>')
    for k in range(5):
        v = top * k / 4
        parts.append(f'<text x="{PAD - 6}" y="{y(v) + 4}" text-anchor="end">{v:.1f}</text>')
        parts.append(f'<line x1="{PAD}" y1="{y(v)}" x2="{W - PAD}" y2="{y(v)}" stroke="#eee"/>')
    for column, (name, colour) in enumerate(COLOURS.items(), start=1):
        points = " ".join(f"{x(i)},{y(row[column])}" for i, row in enumerate(rows))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
        parts.append(f'<text x="{PAD + 8}" y="{PAD + 16 * column - 8}" fill="{colour}">{name}</text>')
    return "\n".join(parts + ["</svg>\n"])


def main() -> None:
    source, title, target = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(svg(read_table(Path(source).read_text()), title))


if __name__ == "__main__":
    main()
