"""Small server-rendered SVG charts (no JavaScript, no charting library)."""

from __future__ import annotations

from markupsafe import Markup, escape


def bars(values: list[int], highlight: list[int] | None = None, labels: tuple[str, str] = ("", ""),
         title: str = "", width: int = 480, height: int = 120) -> Markup:
    """A bar chart of `values` (oldest first); `highlight` overlays a second series in red.

    Each bar is `width / len(values)` wide with a 1 px gap; heights scale to the largest value.
    """
    top = max([*values, *(highlight or []), 1])
    plot_h = height - 18  # room for the axis labels
    step = width / max(len(values), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<line class="axis" x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}"/>']
    for series, css in ((values, "bar"), (highlight or [], "bar bad")):
        for i, value in enumerate(series):
            h = plot_h * value / top
            parts.append(f'<rect class="{css}" x="{i * step + 0.5:.1f}" y="{plot_h - h:.1f}" '
                         f'width="{max(step - 1, 1):.1f}" height="{h:.1f}"><title>{value}</title></rect>')
    parts.append(f'<text class="tick" x="0" y="{height - 3}">{escape(labels[0])}</text>')
    parts.append(f'<text class="tick" x="{width}" y="{height - 3}" text-anchor="end">{escape(labels[1])}</text>')
    parts.append(f'<text class="tick" x="{width}" y="10" text-anchor="end">max {top}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def meter(fraction: float, width: int = 120, height: int = 8) -> Markup:
    """A thin horizontal gauge for a 0–1 fraction (memory use)."""
    fraction = min(max(fraction, 0.0), 1.0)
    return Markup(f'<svg class="meter" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
                  f'<rect class="track" width="{width}" height="{height}" rx="4"/>'
                  f'<rect class="fill" width="{width * fraction:.1f}" height="{height}" rx="4"/></svg>')
