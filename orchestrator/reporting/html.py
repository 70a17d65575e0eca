"""One self-contained HTML page per sweep: every table (best cells marked), curves as embedded PNGs, the config
and the git revision. No external assets, so the page opens from an MLflow artifact or an e-mail alike."""

from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd

STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;"
         "margin:1em 0}th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}"
         "th:first-child,td:first-child{text-align:left}td.best{font-weight:bold;background:#e8f5e9}"
         "caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.4em}"
         "pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.8em}")


def table_html(table: pd.DataFrame) -> str:
    """A <table> whose best cells carry class="best" (the same mask the other renderers bold)."""
    best = table.attrs.get("best")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["method", *table.columns])
    rows = []
    for i, method in enumerate(table.index):
        cells = []
        for j, value in enumerate(table.iloc[i]):
            mark = ' class="best"' if best is not None and bool(best.iat[i, j]) else ""
            cells.append(f"<td{mark}>{html.escape(str(value))}</td>")
        rows.append(f"<tr><td>{html.escape(str(method))}</td>{''.join(cells)}</tr>")
    return (f"<h3>{html.escape(str(table.attrs.get('title', '')))}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody><caption>{html.escape(str(table.attrs.get('caption', '')))}</caption>"
            "</table>")


def figure_html(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def report_page(title: str, tables: dict[str, pd.DataFrame], figures: dict[str, object],
                config: dict | None = None, revision: str | None = None,
                sections: dict[str, str] | None = None) -> str:
    """The whole page: summary tables first (average, final, efficiency, reference, queries), then per dataset,
    then the text ``sections`` (title -> preformatted text, e.g. the claims check), curves, the sweep's config."""
    order = ["average", "final", "efficiency", "reference", "queries", "dataset"]
    ranked = sorted(tables.items(), key=lambda kv: order.index(kv[1].attrs.get("kind", "dataset"))
                    if kv[1].attrs.get("kind", "dataset") in order else len(order))
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if revision:
        parts.append(f"<p>git revision <code>{html.escape(revision)}</code></p>")
    parts += [table_html(t) for _, t in ranked]
    parts += [f"<h2>{html.escape(name)}</h2><pre>{html.escape(text)}</pre>" for name, text in (sections or {}).items()]
    parts += ["<h2>Learning curves</h2>"] + [figure_html(f, name) for name, f in figures.items()]
    if config is not None:
        parts.append(f"<h2>Config</h2><pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
