"""The papers' published numbers, as data, and their placement beside the measured rows.

One YAML file per paper under ``experiments/references/`` (the sweep passes the folder in)::

    paper: cec
    title: Safaei & Patel, Active Learning for Vision-Language Models
    text: cec-active-learning-for-vlms.txt       # the paper's text under shared/papers/
    configs: [cec, cec_vpt_maple]                # the paper configs whose names the rows use
    extra: {backbones: [RN50:openai]}            # names a row may use beyond the configs' (say why in a comment)
    columns: [source, dataset, backbone, budget, round, method, value, std, p_value]
    rows:
      - [Table 1, dtd, ViT-B-16:openai, pool_1pct, 1, cec+coop, 53.21, 0.5, null]

Every row speaks the sweep's language (card names, method names, budget names, round index) so that
matching a measured row is an equality test on (dataset, backbone, budget, round, method); ``value`` and
``std`` are in the paper's display units (percent), ``p_value`` only where the paper prints one. A row whose
dataset is ``average`` is the paper's mean over the datasets of its table (``source``): the datasets that
table's other rows name, or the file's ``averages: {<source>: [datasets]}`` for a table that prints only
averages. It matches the sweep's averaged table only when that averages the same datasets, so a paper's
three-dataset average and its six-dataset one (same method, budget and round) are two rows, not a clash.

Why data and not code: a test checks that every number in a file occurs in the paper's text, and a file
that names a dataset, method or budget its configs do not know is refused with the known names, so a
typo cannot silently leave a reference row unmatched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

__all__ = ["ReferenceError", "ReferenceTable", "load_reference", "available_papers", "match_references",
           "numbers_missing_from_text", "validate_reference", "COLUMNS", "AVERAGE"]

COLUMNS = ["source", "dataset", "backbone", "budget", "round", "method", "value", "std", "p_value"]
REQUIRED = COLUMNS[:7]
KEYS = ["dataset", "backbone", "budget", "round", "method"]
AVERAGE = "average"
#: The datasets an ``average`` row (or an averaged measured cell) covers, comma-joined and sorted; "" otherwise.
SCOPE = "scope"


class ReferenceError(ValueError):
    """A reference file that cannot be used as it is; the message says what to fix."""


@dataclass(frozen=True)
class ReferenceTable:
    """One paper's reference rows (a DataFrame with :data:`COLUMNS`) and where they come from."""

    paper: str
    title: str
    text: str
    configs: tuple[str, ...]
    rows: pd.DataFrame
    path: Path
    extra: dict
    averages: dict = None  # source -> the datasets its average rows cover, for tables that print only averages


def available_papers(folder: Path) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def load_reference(folder: Path, paper: str) -> ReferenceTable:
    """Read ``<folder>/<paper>.yaml``; an unknown paper names the known ones."""
    path = Path(folder) / f"{paper}.yaml"
    if not path.is_file():
        known = ", ".join(available_papers(folder)) or "(none)"
        raise ReferenceError(f"no reference file for paper {paper!r} in {folder}; known papers: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("paper", "text", "configs", "columns", "rows") if k not in raw]
    if missing:
        raise ReferenceError(f"{path}: missing keys {missing}")
    columns = list(raw["columns"])
    if columns[:len(REQUIRED)] != REQUIRED or not set(columns) <= set(COLUMNS):
        raise ReferenceError(f"{path}: columns must start with {REQUIRED} and may add {COLUMNS[7:]}; got {columns}")
    records = []
    for i, row in enumerate(raw["rows"] or []):
        if not isinstance(row, list) or not len(REQUIRED) <= len(row) <= len(columns):
            raise ReferenceError(f"{path}: row {i + 1} {row!r} needs {len(REQUIRED)} to {len(columns)} values "
                                 f"({', '.join(columns)})")
        records.append(dict(zip(columns, row)))
    rows = pd.DataFrame(records, columns=COLUMNS)
    rows["round"] = rows["round"].astype(int)
    for col in ("value", "std", "p_value"):
        rows[col] = pd.to_numeric(rows[col], errors="raise").astype(float)
    rows[["dataset", "backbone", "budget", "method", "source"]] = rows[
        ["dataset", "backbone", "budget", "method", "source"]].astype(str)
    averages = {str(k): sorted(map(str, v)) for k, v in (raw.get("averages") or {}).items()}
    rows[SCOPE] = _scopes(rows, averages)
    return ReferenceTable(paper=str(raw["paper"]), title=str(raw.get("title", raw["paper"])), text=str(raw["text"]),
                          configs=tuple(raw["configs"]), rows=rows, path=path,
                          extra={k: list(v) for k, v in (raw.get("extra") or {}).items()}, averages=averages)


def scope_of(datasets) -> str:
    return ",".join(sorted(set(datasets) - {AVERAGE}))


def _scopes(rows: pd.DataFrame, averages: dict[str, list[str]]) -> list[str]:
    """Per row: the datasets its average covers (declared for its source, else its source's other rows)."""
    named = rows[rows["dataset"] != AVERAGE].groupby("source")["dataset"].agg(scope_of).to_dict()
    return [("" if d != AVERAGE else scope_of(averages[src]) if src in averages else named.get(src, ""))
            for d, src in zip(rows["dataset"], rows["source"])]


EXTRA_KINDS = ("backbones", "budgets", "methods")


def validate_reference(ref: ReferenceTable, configs: list, cards: set[str]) -> list[str]:
    """Names nothing knows, each with the known ones (empty = usable).

    ``configs`` are the loaded :class:`~orchestrator.config.SweepConfig` of ``ref.configs`` and ``cards`` the
    dataset names the registry knows. A row's method, budget and backbone must be one its configs run or one
    the file's ``extra:`` declares (a paper's table on a backbone or budget the configs leave to ``--set``);
    its dataset must be a card (or ``average``).
    """
    bad_kinds = sorted(set(ref.extra) - set(EXTRA_KINDS))
    if bad_kinds:
        return [f"{ref.path.name}: extra: {bad_kinds} unknown; it may list {list(EXTRA_KINDS)}"]
    known = {
        "dataset": set(cards) | {AVERAGE},
        "budget": {b for c in configs for b in c.budgets} | set(ref.extra.get("budgets", ())),
        "method": {m.name for c in configs for m in c.methods} | set(ref.extra.get("methods", ())),
        "backbone": {c.encoder for c in configs} | set(ref.extra.get("backbones", ())),
    }
    errors = []
    for column, names in known.items():
        unknown = sorted(set(ref.rows[column]) - names)
        if unknown:
            errors.append(f"{ref.path.name}: unknown {column} {unknown}; known: {sorted(names)} (the configs "
                          f"{list(ref.configs)}, the cards, and the file's extra:)")
    if (ref.rows["round"] < 0).any():
        errors.append(f"{ref.path.name}: negative rounds")
    for source, datasets in (ref.averages or {}).items():
        unknown = sorted(set(datasets) - set(cards))
        if unknown:
            errors.append(f"{ref.path.name}: averages: {source} names unknown datasets {unknown}")
    blind = sorted(set(ref.rows.loc[(ref.rows["dataset"] == AVERAGE) & (ref.rows[SCOPE] == ""), "source"]))
    if blind:
        errors.append(f"{ref.path.name}: average rows of {blind} cover no known datasets; name them under "
                      f"`averages: {{{blind[0]}: [...]}}`")
    dupes = ref.rows[ref.rows.duplicated(KEYS + [SCOPE], keep=False)]
    if len(dupes):
        errors.append(f"{ref.path.name}: {len(dupes)} rows share (dataset, backbone, budget, round, method), e.g. "
                      f"{dupes.iloc[0][KEYS].tolist()}; keep one per key")
    return errors


_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?![\d])")


def _spellings(value: float) -> set[str]:
    """How a paper may print a number: as typed (2 decimals at most), without trailing zeros, and padded to two
    digits before the point ("07.6" in a column of "26.3"s)."""
    out = set()
    for decimals in range(0, 5):
        text = f"{value:.{decimals}f}"
        if math.isclose(float(text), value, abs_tol=1e-9):
            out |= {text, text.rstrip("0").rstrip(".") if "." in text else text}
    return out | {f"0{t}" for t in out if 0 <= value < 10}


def numbers_missing_from_text(ref: ReferenceTable, text: str) -> list[tuple[str, float]]:
    """(column, number) pairs of the file that never occur in the paper's text (a typing error)."""
    printed = set(_NUMBER.findall(text.replace("−", "-")))
    missing = []
    for col in ("value", "std", "p_value"):
        for value in ref.rows[col].dropna().unique():
            if not (_spellings(float(value)) & printed):
                missing.append((col, float(value)))
    return missing


def match_references(measured: pd.DataFrame, ref: ReferenceTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(matched, unmatched): reference rows beside measured seed means, and the rows nothing matched.

    ``measured`` has one row per (dataset, backbone, budget, round, method) with ``mean``/``std`` in display
    units and ``n_seeds`` (see :func:`orchestrator.reporting.stats.measured_cells`); dataset ``average`` rows
    are the over-datasets means. ``difference`` is measured minus reported.
    """
    if SCOPE not in measured:  # per-dataset cells only
        measured = measured.assign(**{SCOPE: ""})
    merged = ref.rows.merge(measured, on=KEYS + [SCOPE], how="left", suffixes=("", "_measured"))
    hit = merged["mean"].notna()
    matched = merged[hit].rename(columns={"value": "reported", "std": "reported_std", "mean": "measured",
                                          "std_measured": "measured_std"})
    matched = matched.assign(difference=matched["measured"] - matched["reported"])
    return matched.reset_index(drop=True), ref.rows[~hit.to_numpy()].reset_index(drop=True)


def measured_cells(tables: dict[str, pd.DataFrame], df: pd.DataFrame) -> pd.DataFrame:
    """Seed means of every (dataset or ``average``, backbone, budget, round, method) cell of the comparison
    tables, in display units: what :func:`match_references` puts beside the papers' numbers."""
    encoders = df.groupby("dataset")["encoder"].first().to_dict()
    rows = []
    for table in tables.values():
        kind = table.attrs.get("kind")
        if kind not in ("dataset", "average"):
            continue
        dataset = table.attrs["dataset"] if kind == "dataset" else AVERAGE
        scope = "" if kind == "dataset" else scope_of(table.attrs.get("datasets") or [])
        sweep_encoders = {encoders.get(d) for d in (table.attrs.get("datasets") or [dataset])}
        backbone = encoders.get(dataset) if kind == "dataset" else (
            sweep_encoders.pop() if len(sweep_encoders) == 1 else None)
        mean, std, n = table.attrs["mean"], table.attrs["std"], table.attrs["n_seeds"]
        for j, rnd in enumerate(table.attrs["rounds"]):
            for method in mean.index:
                rows.append({"dataset": dataset, SCOPE: scope, "backbone": backbone, "budget": table.attrs["budget"],
                             "round": int(rnd), "method": method, "mean": mean.iat[mean.index.get_loc(method), j],
                             "std": std.iat[std.index.get_loc(method), j], "n_seeds": n.iat[n.index.get_loc(method), j]})
    cells = pd.DataFrame(rows, columns=KEYS + [SCOPE, "mean", "std", "n_seeds"])
    return cells.dropna(subset=["mean"])


def reference_table(ref: ReferenceTable, matched: pd.DataFrame, unmatched: pd.DataFrame) -> pd.DataFrame:
    """Display rows "method · dataset · budget · round": the paper's number, the measured mean, the difference;
    the caption counts the paper's rows nothing in the sweep matched (listed in ``attrs["unmatched"]``)."""
    index = [f"{r.method} · {r.dataset} · {r.budget} · r{r.round}" for r in matched.itertuples()]
    fmt = lambda v: "—" if pd.isna(v) else f"{v:.1f}"  # noqa: E731
    display = pd.DataFrame({
        "source": matched["source"].to_list(),
        "paper": [fmt(v) + ("" if pd.isna(s) else f" ± {s:.1f}") for v, s in zip(matched["reported"],
                                                                                  matched["reported_std"])],
        "measured": [fmt(v) + ("" if pd.isna(s) else f" ± {s:.1f}") for v, s in zip(matched["measured"],
                                                                                     matched["measured_std"])],
        "Δ (measured − paper)": [f"{d:+.1f}" for d in matched["difference"]],
        "p (paper)": ["—" if pd.isna(p) else f"{p:g}" for p in matched["p_value"]],
    }, index=pd.Index(index, name="method"))
    numbers = matched[["reported", "measured", "difference"]].set_axis(index)
    caption = (f"{ref.title}: the paper's numbers ({ref.path.name}) beside this sweep's seed means, matched on "
               f"dataset, backbone, budget, round and method; {len(matched)} matched, {len(unmatched)} of the "
               f"paper's rows have no measured twin in this sweep (other datasets, backbones or methods).")
    numeric = numbers.reindex(columns=display.columns)
    display.attrs.update(title=f"paper reference — {ref.paper}", caption=caption, kind="reference",
                         mean=numeric, std=numeric * float("nan"), n_seeds=numeric * 0, best=None,
                         numbers=numbers, unmatched=unmatched, dataset=None, budget=None)
    return display
