"""A paper's published numbers as rows of the comparison tables: under each measured method, the paper's row
and the difference, so the two read side by side where a reader already looks.

The rows sit in the display frame and in its ``attrs`` frames (``mean`` holds the paper's number for the
paper row, NaN for the difference row; ``best`` is never set on them), so every renderer (markdown, CSV,
LaTeX, HTML, rich) shows them without knowing they are special.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchestrator.reporting.references import (AVERAGE, load_reference, match_references, measured_cells,
                                               reference_table)

MISSING = "—"


def _paper_rows(table: pd.DataFrame, matched: pd.DataFrame) -> pd.DataFrame:
    dataset = table.attrs["dataset"] if table.attrs["kind"] == "dataset" else AVERAGE
    return matched[(matched["dataset"] == dataset) & (matched["budget"] == table.attrs["budget"])]


def interleave_reference(table: pd.DataFrame, matched: pd.DataFrame, paper: str) -> pd.DataFrame:
    """``table`` with "<method> · <paper> (<source>)" and "<method> · Δ" under each method the paper reports
    at some of the table's rounds; the table itself when it is not a methods x rounds table or nothing matches."""
    if table.attrs.get("kind") not in ("dataset", "average"):
        return table
    rows = _paper_rows(table, matched)
    if rows.empty:
        return table
    rounds = list(table.attrs["rounds"])
    display, index, numbers = [], [], []
    for method in table.index:
        display.append(list(table.loc[method]))
        index.append(method)
        numbers.append(table.attrs["mean"].loc[method].to_numpy())
        mine = {int(r.round): r for r in rows[rows["method"] == method].itertuples()}
        if not mine:
            continue
        sources = ", ".join(sorted({r.source for r in mine.values()}))
        reported = [mine[r].reported if r in mine else float("nan") for r in rounds]
        display.append([MISSING if pd.isna(v) else f"{v:.1f}" for v in reported])
        display.append([f"{mine[r].difference:+.1f}" if r in mine else MISSING for r in rounds])
        index += [f"{method} · {paper} ({sources})", f"{method} · Δ (measured − {paper})"]
        numbers += [reported, [float("nan")] * len(rounds)]
    new_index = pd.Index(index, name=table.index.name)
    out = pd.DataFrame(display, index=new_index, columns=table.columns)
    mean = pd.DataFrame(numbers, index=new_index, columns=table.attrs["mean"].columns)
    out.attrs.update(table.attrs)
    out.attrs.update(
        mean=mean, std=table.attrs["std"].reindex(new_index), n_seeds=table.attrs["n_seeds"].reindex(new_index),
        best=table.attrs["best"].reindex(new_index, fill_value=False).astype(bool),
        caption=f"{table.attrs['caption']} Under a method: {paper}'s published number at the same dataset, "
                f"backbone, budget and round, and measured minus published.")
    return out


def add_reference(tables: dict[str, pd.DataFrame], df: pd.DataFrame, folder: Path, paper: str):
    """(tables with the paper's rows interleaved plus ``reference__<paper>``, the unmatched reference rows).

    Raises :class:`orchestrator.reporting.references.ReferenceError` for an unknown paper (naming the known
    ones) or a malformed file.
    """
    ref = load_reference(folder, paper)
    matched, unmatched = match_references(measured_cells(tables, df), ref)
    out = {key: interleave_reference(table, matched, paper) for key, table in tables.items()}
    out[f"reference__{paper}"] = reference_table(ref, matched, unmatched)
    return out, unmatched
