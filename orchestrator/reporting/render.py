"""Renderers of comparison tables: markdown, CSV (numbers only), LaTeX (booktabs), rich (terminal)."""

from __future__ import annotations

import pandas as pd


def _best(table: pd.DataFrame, i: int, j: int) -> bool:
    best = table.attrs.get("best")
    return bool(best is not None and best.iat[i, j])


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub-flavoured markdown, best cells in **bold**, title above and caption below."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    header = "| method | " + " | ".join(esc(c) for c in table.columns) + " |"
    rule = "|:--|" + "".join("--:|" for _ in table.columns)
    lines = [f"**{table.attrs.get('title', '')}**", "", header, rule]
    for i, method in enumerate(table.index):
        cells = [f"**{v}**" if _best(table, i, j) else v for j, v in enumerate(table.iloc[i])]
        lines.append("| " + esc(method) + " | " + " | ".join(esc(c) for c in cells) + " |")
    lines += ["", f"_{table.attrs.get('caption', '')}_", ""]
    return "\n".join(lines)


def to_csv(table: pd.DataFrame) -> str:
    """Numbers only: ``<column> mean`` and ``<column> std`` per column, no markup, NaN empty."""
    mean, std = table.attrs["mean"], table.attrs["std"]
    out = pd.DataFrame(index=table.index)
    for j, col in enumerate(table.columns):
        out[f"{col} mean"] = mean.iloc[:, j].to_numpy()
        out[f"{col} std"] = std.iloc[:, j].to_numpy()
    out.index.name = "method"
    return out.to_csv(float_format="%.4f", lineterminator="\n")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    """Escape TeX specials and spell the unicode we emit (±, dashes) so pdflatex needs no setup."""
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return text.replace("—", "---").replace("–", "--").replace("±", r"$\pm$")


def _latex_cell(text: str, bold: bool) -> str:
    body = _latex_escape(text)
    return rf"\textbf{{{body}}}" if bold else body


def to_latex(table: pd.DataFrame, label: str | None = None) -> str:
    """A booktabs ``table`` environment; best cells in ``\\textbf{}``; needs ``\\usepackage{booktabs}``."""
    cols = "l" + "r" * len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{_latex_escape(table.attrs.get('caption', ''))}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
              "Method & " + " & ".join(_latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    for i, method in enumerate(table.index):
        cells = [_latex_cell(v, _best(table, i, j)) for j, v in enumerate(table.iloc[i])]
        lines.append(_latex_escape(method) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def rich_table(table: pd.DataFrame):
    """A :class:`rich.table.Table` of a comparison table, best cells bold green, for terminals."""
    from rich.table import Table
    from rich.text import Text

    out = Table(title=table.attrs.get("title"), caption=table.attrs.get("caption"),
                caption_justify="left")
    out.add_column("method", no_wrap=True)
    for col in table.columns:
        out.add_column(str(col), justify="right")
    for i, method in enumerate(table.index):
        cells = [Text(v, style="bold green" if _best(table, i, j) else "")
                 for j, v in enumerate(table.iloc[i])]
        out.add_row(Text(str(method)), *cells)
    return out
