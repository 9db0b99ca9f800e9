"""The parts of ``report.html`` a section is made of: the section, a table, a chart, a note.

The report draws its own sections with them, and so does any stage that owns a section
(``Stage.report_section``), so a plugin's section looks like the rest of the page.
"""

from __future__ import annotations

from html import escape
from typing import Any, NamedTuple

import plotly.graph_objects as go
import plotly.io as pio


class Section(NamedTuple):
    """A titled part of the page; ``anchor`` makes its id (``section-<anchor>``)."""

    title: str
    anchor: str
    body: str


def section(title: str, anchor: str, body: str) -> str:
    return f"<section id='section-{anchor}'><h2>{escape(title)}</h2>\n{body}\n</section>"


def empty(text: str) -> str:
    return f"<p class='empty'>{escape(text)}</p>"


def chart(fig: go.Figure, chart_id: str, height: int = 380) -> str:
    fig.update_layout(template="plotly_white", height=height, margin={"l": 60, "r": 30, "t": 50, "b": 60})
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=chart_id,
                       config={"displaylogo": False, "responsive": True})


def table(headers: list[str], rows: list[list[Any]], table_id: str | None = None) -> str:
    def cell(tag: str, value: Any) -> str:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        attribute = " class='num'" if numeric else ""
        return f"<{tag}{attribute}>{escape(fmt(value))}</{tag}>"

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows)
    ident = f" id='{table_id}'" if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
