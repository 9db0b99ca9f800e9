"""The parts of ``report.html`` a section is made of: the section, a table, a chart, a note.

The report draws its own sections with them, and so does any stage that owns a section
(``Stage.report_section``), so a plugin's section looks like the rest of the page.
"""

from __future__ import annotations

import json
from html import escape
from typing import NamedTuple, Sequence

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


def table(headers: list[str], rows: Sequence[Sequence[object]], table_id: str | None = None) -> str:
    def cell(tag: str, value: object) -> str:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        attribute = " class='num'" if numeric else ""
        return f"<{tag}{attribute}>{escape(fmt(value))}</{tag}>"

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows)
    ident = f" id='{table_id}'" if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def atif_turn(number: int, step: dict) -> str:
    """One agent step of an ATIF trajectory: its thoughts, what it typed, what came back."""
    analysis, plan = _thoughts(step)
    arguments = [c.get("arguments") or {} for c in step.get("tool_calls") or []]
    keystrokes = [a.get("keystrokes") or (a.get("command", "") + "\n") for a in arguments]
    output = "\n".join(r.get("content") or "" for r in (step.get("observation") or {}).get("results") or [])
    extra = step.get("extra") or {}
    metrics = step.get("metrics") or {}
    flags = " · task complete" if extra.get("task_complete") else ""
    flags += f" · malformed: {extra.get('error')}" if extra.get("malformed") else ""
    tokens = f"{fmt(metrics.get('prompt_tokens'))} prompt / {fmt(metrics.get('completion_tokens'))} completion tokens"
    parts = [f"<h4>Turn {number} <span class='meta'>({escape(tokens)}{escape(flags)})</span></h4>"]
    if analysis:
        parts.append(f"<div class='analysis'><span class='label'>Analysis:</span> {escape(analysis)}</div>")
    if plan:
        parts.append(f"<div class='plan'><span class='label'>Plan:</span> {escape(plan)}</div>")
    if not analysis and not plan and step.get("message"):
        parts.append(f"<div class='reply'><span class='label'>Reply:</span><pre>{escape(step['message'])}</pre></div>")
    if keystrokes:
        typed = "\n".join(k[:-1] if k.endswith("\n") else k for k in keystrokes)
        label = "Commands" if any("command" in a for a in arguments) else "Keystrokes"
        parts.append(f"<div><span class='label'>{label}:</span><pre class='keystrokes'>{escape(typed)}</pre></div>")
    if output:
        parts.append(f"<div><span class='label'>Terminal output:</span><pre class='output'>{escape(output)}</pre></div>")
    return f"<div class='turn'>{''.join(parts)}</div>"


def _thoughts(step: dict) -> tuple[str, str]:
    """Analysis and plan of a Terminus reply; other agents' reasoning goes under analysis."""
    try:
        reply = json.loads(step.get("message") or "")
    except ValueError:
        reply = None
    if isinstance(reply, dict) and ("analysis" in reply or "plan" in reply):
        return str(reply.get("analysis") or ""), str(reply.get("plan") or "")
    return step.get("reasoning_content") or "", ""
