"""``experiments/sweep.py CONFIG --dry-run``: what a sweep would run, and whether this machine has what it needs.

A paper protocol names real datasets and real CLIP weights, which an
air-gapped site copies by hand; finding out that one is missing after Ray has
started and half the grid has embedded wastes a cluster slot. The dry run
resolves the grid exactly as :func:`orchestrator.sweep.run_sweep` would
(``SweepConfig.trials()``, the same budget schedules, the same data root and
feature cache) but starts neither Ray nor MLflow, never touches the network and
never downloads (a torchvision card with ``download: true`` is opened with
``download=False``). It reports:

* the number of trials;
* per dataset, whether the pool and test splits are on disk (where it looked,
  and the card's own instructions when they are not) and, for learners with
  ``descriptions: ensemble``, whether the class descriptions are there;
* per encoder (the sweep's, and the black box's), whether its weights resolve
  offline (shipped tiny CLIP, open_clip tag in the local cache, local file);
* per dataset x budget (every method and seed of such a group spends the same
  budget), the labels per round, per trial and in all.

Exit codes (``experiments/sweep.py`` passes them on): 0 everything present,
3 something missing (named in the report), 2 the config cannot run anywhere
(invalid config, or a budget larger than the pool).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import SweepConfig

EXIT_READY = 0
EXIT_CONFIG = 2
EXIT_MISSING = 3


@dataclass
class SplitStatus:
    """One split of one dataset: on disk or not, and where that was decided."""

    split: str
    present: bool
    count: int | None = None  # images the source lists (None: not readable)
    where: str = ""  # the path looked at, or the first item found
    error: str | None = None


@dataclass
class DatasetStatus:
    name: str
    kind: str
    num_classes: int
    splits: list[SplitStatus]
    obtain: str  # the card's instructions, shown when something is missing
    pool_size: int | None = None
    pool_size_from: str = "unknown"  # cache | data | card | unknown
    descriptions: dict | None = None  # only when a learner uses descriptions
    attributes: dict | None = None  # only when a plug-in uses attribute sentences

    @property
    def present(self) -> bool:
        return all(s.present for s in self.splits)

    @property
    def descriptions_present(self) -> bool:
        return self.descriptions is None or bool(self.descriptions.get("present"))

    @property
    def attributes_present(self) -> bool:
        return self.attributes is None or bool(self.attributes.get("present"))


@dataclass
class EncoderStatus:
    name: str
    role: str  # "encoder" or "blackbox"
    available: bool
    where: str = ""
    error: str | None = None


@dataclass
class LabelGroup:
    """The labels every trial of one dataset x budget spends (methods and seeds spend alike)."""

    dataset: str
    budget: str
    schedule: str
    methods: list[str]
    seeds: int
    rounds: int
    per_round: list[int] | None  # None: needs the pool size, which is unknown
    text: str  # how the dry run prints it
    error: str | None = None  # a budget that cannot be spent on this pool

    @property
    def trials(self) -> int:
        return len(self.methods) * self.seeds

    @property
    def labels_per_trial(self) -> int | None:
        return sum(self.per_round) if self.per_round is not None else None


@dataclass
class DryRunReport:
    experiment: str
    trials: int
    data_root: str
    cache: str
    datasets: list[DatasetStatus]
    encoders: list[EncoderStatus]
    labels: list[LabelGroup]
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        """One line per thing this machine lacks, each naming it."""
        out = []
        for d in self.datasets:
            out += [f"dataset {d.name} ({s.split}): {s.error}" for s in d.splits if not s.present]
            if not d.descriptions_present:
                out.append(f"dataset {d.name} (class descriptions): {d.descriptions.get('error')}")
            if not d.attributes_present:
                out.append(f"dataset {d.name} (attribute sentences): {d.attributes.get('error')}")
        out += [f"{e.role} {e.name}: {e.error}" for e in self.encoders if not e.available]
        return out

    @property
    def config_errors(self) -> list[str]:
        return [f"budget {g.budget} on {g.dataset}: {g.error}" for g in self.labels if g.error]

    @property
    def exit_code(self) -> int:
        if self.config_errors:
            return EXIT_CONFIG
        return EXIT_MISSING if self.missing else EXIT_READY

    @property
    def labels_total(self) -> int | None:
        """Labels the whole grid may query; None while a pool size is unknown."""
        per_group = [g.labels_per_trial for g in self.labels]
        if any(n is None for n in per_group):
            return None
        return sum(n * g.trials for n, g in zip(per_group, self.labels))

    def summary(self) -> dict:
        """The one JSON object the CLI prints on stdout (like a real run's summary)."""
        return {
            "dry_run": True, "experiment": self.experiment, "trials": self.trials,
            "ready": self.exit_code == EXIT_READY, "exit_code": self.exit_code,
            "data_root": self.data_root, "cache": self.cache,
            "datasets": {d.name: {**{k: v for k, v in asdict(d).items() if k != "name"}, "present": d.present}
                         for d in self.datasets},
            "encoders": {e.name: {k: v for k, v in asdict(e).items() if k != "name"} for e in self.encoders},
            "labels": [{**asdict(g), "trials": g.trials, "labels_per_trial": g.labels_per_trial,
                        "labels_all_trials": None if g.labels_per_trial is None else g.labels_per_trial * g.trials}
                       for g in self.labels],
            "labels_total": self.labels_total,
            "missing": self.missing, "config_errors": self.config_errors, "notes": self.notes,
        }


# ----------------------------------------------------------------- datasets


def _open_without_download(name: str, split: str, options: dict):
    """Open a split as the sweep would, except that torchvision may never download (a dry run fetches nothing)."""
    from datasets.registry import get_card, open_split

    if get_card(name).source.kind == "torchvision":
        options = {**options, "download": False}
    return open_split(name, split, **options)


def _missing_files(source, sample: int = 3) -> str | None:
    """A file-list source (manifest, image folder) can list images that are not there: check a few of them.

    The split file alone proves little; CoOp's JSONs are often copied without the images.
    """
    files = getattr(source, "files", None)
    if not files:
        return None
    step = max(1, len(files) // sample)
    for path in list(files[::step])[:sample] + [files[-1]]:
        if not Path(path).exists():
            return path
    return None


def check_split(name: str, split: str, options: dict) -> tuple[SplitStatus, object]:
    """Whether ``name``/``split`` can be read here, and its source when it can.

    The error says where it looked (the sources' own messages name the path).
    """
    from datasets.sources.base import DatasetNotFoundError

    try:
        source = _open_without_download(name, split, options)
    except DatasetNotFoundError as exc:
        return SplitStatus(split, False, error=f"not found: {exc}"), None
    except Exception as exc:  # a present but unreadable dataset (labels, class list, empty split, h5py missing)
        return SplitStatus(split, False, error=f"unreadable: {type(exc).__name__}: {exc}"), None
    absent = _missing_files(source)
    if absent is not None:
        return SplitStatus(split, False, len(source), absent,
                           f"the split lists {len(source)} images but {absent} does not exist (images not "
                           "copied?)"), None
    where = "rendered from the seed" if type(source).__name__ == "SyntheticSource" else source.locate(0)
    return SplitStatus(split, True, len(source), where), source


_COUNT = re.compile(r"^\s*(\d[\d,]*)\b")


def card_split_size(card, split: str) -> int | None:
    """The size a card states for a split ("2,820 images (CoOp)" -> 2820), or None when it states none."""
    match = _COUNT.match(card.splits.get(split, ""))
    return int(match.group(1).replace(",", "")) if match else None


def cached_count(cache_root: Path, spec, name: str, split: str, source=None) -> int | None:
    """Rows of a complete feature cache of this split, which is what trials actually draw from.

    With the source at hand the cache directory is exactly the sweep's; without it (images not on
    this machine) a single complete cache of the split under this encoder is taken.
    """
    from .features import split_cache

    if spec is None:
        return None
    try:
        if source is not None:
            manifests = [split_cache(cache_root, spec, name, source, 1).manifest_path]
        else:
            manifests = sorted((cache_root / spec.key / name).glob(f"{split}-*/manifest.json"))
            if len(manifests) != 1:
                return None
        return int(json.loads(manifests[0].read_text())["count"])
    except Exception:  # no cache, or one this dry run cannot read: the next source of the size applies
        return None


def pool_size(card, split: str, source, cache_root: Path, spec) -> tuple[int | None, str]:
    """The pool size a fractional budget resolves against, and where it came from.

    Most exact first: the cached feature count (what the sweep's trials use; it differs from the
    source when corrupt images were skipped), the source's own count, the card's stated size (all a
    machine without the data has), else unknown.
    """
    n = cached_count(cache_root, spec, card.name, split, source)
    if n is not None:
        return n, "cache"
    if source is not None:
        return len(source), "data"
    n = card_split_size(card, split)
    return (n, "card") if n is not None else (None, "unknown")


def check_descriptions(card) -> dict:
    """Whether the class descriptions a ``descriptions: ensemble`` learner needs are here (file, else attributes)."""
    from datasets.descriptions import (DescriptionsMismatchError, DescriptionsNotFoundError, card_descriptions,
                                       description_path)

    if card.descriptions is not None:
        path = str(description_path(card.descriptions.file))
        try:
            found = card_descriptions(card)
        except (DescriptionsNotFoundError, DescriptionsMismatchError) as exc:
            return {"source": "file", "path": path, "present": False, "error": str(exc)}
        return {"source": "file", "path": path, "present": True, "classes": len(found),
                "sentences": sum(map(len, found.values()))}
    covered = [c for c in card.classes if card.attributes.get(c) and card.attributes[c].positive]
    missing = [c for c in card.classes if c not in covered]
    out = {"source": "attributes", "present": not missing, "classes": len(covered)}
    if missing:
        out["error"] = (f"the card names no description file and {len(missing)} classes have no "
                        f"attributes.<class>.positive sentences (e.g. {missing[:5]}); add `descriptions: "
                        "PATH/TO/descriptors.json` to the card (see datasets/descriptions.py)")
    return out


def check_attributes(card) -> dict:
    """Whether the attribute sentences (inline, or the card's attribute files) are here for every class."""
    from datasets.attributes import attribute_file_status, card_attributes
    from datasets.descriptions import DescriptionsMismatchError, DescriptionsNotFoundError

    out = {"source": "files" if card.attribute_files else "card", "files": attribute_file_status(card)}
    try:
        found = card_attributes(card)
    except (DescriptionsNotFoundError, DescriptionsMismatchError) as exc:
        return {**out, "present": False, "error": str(exc)}
    missing = [c for c in card.classes if c not in found]
    if missing:
        return {**out, "present": False, "error": f"{len(missing)} classes have no attribute sentences (e.g. "
                f"{missing[:5]}); add `attribute_files:` (AttrVR's JSON layout) or `attributes:` to the card"}
    return {**out, "present": True, "classes": len(found)}


def check_dataset(config: SweepConfig, name: str, cache_root: Path, spec, needs_descriptions: bool,
                  needs_attributes: bool = False) -> DatasetStatus:
    from datasets.registry import get_card

    card = get_card(name)
    options = config.dataset_options.get(name, {})
    pool_split, test_split = config.splits_of(name)
    checked = [check_split(name, s, options) for s in dict.fromkeys((pool_split, test_split))]
    status = DatasetStatus(name, card.source.kind, card.num_classes, [c[0] for c in checked],
                           card.source.obtain.strip())
    status.pool_size, status.pool_size_from = pool_size(card, pool_split, checked[0][1], cache_root, spec)
    if needs_descriptions:
        status.descriptions = check_descriptions(card)
    if needs_attributes:
        status.attributes = check_attributes(card)
    return status


# ----------------------------------------------------------------- encoders


def check_encoder(name: str, role: str = "encoder") -> tuple[EncoderStatus, object]:
    """Whether ``name``'s weights resolve offline; also returns the parsed spec (None when they do not)."""
    from methods.core.encoders import EncoderUnavailableError, parse_encoder

    try:
        spec = parse_encoder(name)
    except EncoderUnavailableError as exc:
        return EncoderStatus(name, role, False, error=f"weights not on this machine: {exc} (in a sweep config: "
                                                      "`encoder: MODEL:/path/to/weights`)"), None
    except ValueError as exc:  # unknown model, tag or spelling: the message lists the known ones
        return EncoderStatus(name, role, False, error=f"unknown encoder: {exc}"), None
    where = str(spec.weights) if spec.weights is not None else spec.model.split(":", 1)[1]
    return EncoderStatus(name, role, True, where), spec


# ----------------------------------------------------------------- budgets


def _needs_pool(schedule) -> bool:
    """Schedules whose counts depend on the pool size (a share of it), not only on classes and rounds."""
    from .budget import Cumulative, PoolFraction

    return isinstance(schedule, PoolFraction) or (isinstance(schedule, Cumulative)
                                                   and any(t <= 1 for t in schedule.targets))


def _schedule_text(schedule) -> str:
    from .budget import PoolFraction

    if isinstance(schedule, PoolFraction):
        return f"{schedule.fraction * 100:g} % of the pool per round"
    return schedule.describe()


def label_group(config: SweepConfig, dataset: DatasetStatus, budget_name: str, schedule) -> LabelGroup:
    """Per-round labels of one dataset x budget, checked against the pool when its size is known."""
    from .budget import BudgetError

    group = LabelGroup(dataset.name, budget_name, schedule.describe(),
                       [m.name for m in config.methods if m.runs_on(dataset.name) and m.runs_under(budget_name)],
                       len(config.seeds), config.rounds, None, "")
    known = dataset.pool_size is not None
    if _needs_pool(schedule) and not known:
        group.text = f"{_schedule_text(schedule)} (size unknown until the data is present)"
        return group
    try:
        if known:
            steps = schedule.resolve(dataset.pool_size, dataset.num_classes, config.rounds)
        else:  # counts from classes alone; the pool check waits for the data
            steps = schedule.increments(0, dataset.num_classes, config.rounds)
    except BudgetError as exc:
        group.error = str(exc)
        group.text = f"{_schedule_text(schedule)}: {exc}"
        return group
    group.per_round = list(steps)
    rounds = f"{len(steps)} x {steps[0]:,}" if len(set(steps)) == 1 else "+".join(f"{s:,}" for s in steps)
    pool = (f"pool {dataset.pool_size:,} from the {dataset.pool_size_from}" if known
            else "pool size unknown: not checked against it")
    group.text = f"{rounds} = {sum(steps):,} ({_schedule_text(schedule)}; {pool})"
    return group


def certain_budget_errors(config: SweepConfig) -> list[str]:
    """Budgets that cannot fit a pool on disk, found before Ray starts and before anything is embedded.

    A first sweep on ImageNet embeds for an hour before the trials' own check (:class:`ActiveLearningRun`)
    would say the budget is too large. Only a pool the source counts here is grounds for refusal: the features
    trials draw from are at most the source's images (corrupt ones may be skipped), and cold-start labels only
    add to a budget, so an error here is an error there. A card's stated size is never trusted (a user's copy
    may differ), and a split that cannot be opened without a download is left to the sweep.
    """
    from datasets.registry import get_card

    errors = []
    for name in config.datasets:
        try:
            pool = len(_open_without_download(name, config.splits_of(name)[0], config.dataset_options.get(name, {})))
        except Exception:  # noqa: BLE001 - absent or unreadable here: the sweep's preparation reports it
            continue
        status = DatasetStatus(name, "", get_card(name).num_classes, [], "", pool, "data")
        for budget_name, schedule in config.budgets.items():
            group = label_group(config, status, budget_name, schedule)
            if group.error and group.methods:
                errors.append(f"{name}, budget {budget_name!r}: {group.error}")
    return errors


# ----------------------------------------------------------------- the report


def dry_run(config: SweepConfig) -> DryRunReport:
    """Everything :func:`print_report` shows, computed without Ray, MLflow, the network or a download."""
    from datasets.sources.base import default_data_root

    from .features import DEFAULT_CACHE
    from .sweep import uses_attributes, uses_descriptions

    cache_root = Path(config.cache).expanduser() if config.cache else DEFAULT_CACHE
    encoders = [check_encoder(config.encoder)]
    if config.blackbox is not None and config.blackbox.encoder != config.encoder:
        encoders.append(check_encoder(config.blackbox.encoder, "blackbox"))
    spec = encoders[0][1]
    datasets = [check_dataset(config, n, cache_root, spec, uses_descriptions(config, n), uses_attributes(config, n))
                for n in config.datasets]
    labels = [label_group(config, d, b, s) for d in datasets for b, s in config.budgets.items()]
    notes = []
    if any(m.acquisition in ("cbsq", "sq") for m in config.methods):
        notes.append("selective querying (cbsq, sq) pseudo-labels confident candidates for free, so those methods "
                     "may query fewer labels than the budget shown")
    return DryRunReport(config.experiment, len(config.trials()), str(default_data_root()), str(cache_root),
                        datasets, [e for e, _ in encoders], labels, notes)


def print_report(report: DryRunReport, console) -> None:
    """Rich tables on the console (stderr in the CLI); how to get each missing thing follows the tables."""
    from rich.table import Table

    mark = {True: "[green]present[/green]", False: "[red]missing[/red]"}
    data = Table(title=f"{report.experiment}: datasets (data root {report.data_root})")
    for col in ("dataset", "source", "splits", "pool size", "descriptions"):
        data.add_column(col, overflow="fold")
    for d in report.datasets:
        splits = "\n".join(f"{s.split}: {mark[s.present]}" + (f" ({s.count:,})" if s.count is not None else "")
                           for s in d.splits)
        pool = f"{d.pool_size:,} ({d.pool_size_from})" if d.pool_size is not None else "unknown"
        desc = "-" if d.descriptions is None else f"{d.descriptions['source']}: {mark[d.descriptions_present]}"
        data.add_row(d.name, d.kind, splits, pool, desc)
    console.print(data)
    enc = Table(title="encoders")
    for col in ("encoder", "role", "weights", "where"):
        enc.add_column(col, overflow="fold")
    for e in report.encoders:
        enc.add_row(e.name, e.role, mark[e.available], e.where or "-")
    console.print(enc)
    lab = Table(title="labels per round, per trial and in all (every method and seed of a row spends alike)")
    lab.add_column("dataset", overflow="fold", ratio=3)
    lab.add_column("budget", overflow="fold", ratio=2)
    lab.add_column("per round", overflow="fold", ratio=2)
    for col in ("rounds", "trial", "trials", "total"):
        lab.add_column(col, justify="right", no_wrap=True)
    for g in report.labels:
        if g.per_round is None:  # unknown pool size, or a budget that does not fit the pool
            per = f"[red]{g.text}[/red]" if g.error else g.text
            lab.add_row(g.dataset, g.budget, per, str(g.rounds), "?", str(g.trials), "?")
            continue
        per = f"{g.per_round[0]:,}" if len(set(g.per_round)) == 1 else "+".join(f"{n:,}" for n in g.per_round)
        lab.add_row(g.dataset, g.budget, per, str(g.rounds), f"{g.labels_per_trial:,}", str(g.trials),
                    f"{g.labels_per_trial * g.trials:,}")
    console.print(lab)
    for note in report.notes:
        console.print(f"note: {note}")
    for d in report.datasets:  # one block per missing dataset: why (once per distinct reason), then how to get it
        if not d.present:
            absent = [s for s in d.splits if not s.present]
            more = f" (and likewise {', '.join(s.split for s in absent[1:])})" if len(absent) > 1 else ""
            console.print(f"[red]missing[/red] dataset {d.name}, split {absent[0].split}: {absent[0].error}{more}")
            console.print(f"  [bold]how to get it[/bold]: {d.obtain}")
        if not d.descriptions_present:
            console.print(f"[red]missing[/red] class descriptions of {d.name}: {d.descriptions.get('error')}")
        if not d.attributes_present:
            console.print(f"[red]missing[/red] attribute sentences of {d.name}: {d.attributes.get('error')}")
    for e in report.encoders:
        if not e.available:
            console.print(f"[red]missing[/red] {e.role} {e.name}: {e.error}")
    for line in report.config_errors:
        console.print(f"[red]error[/red] {line}")
    total = f"{report.labels_total:,}" if report.labels_total is not None else "unknown (pool sizes missing)"
    verdict = {EXIT_READY: "[green]ready[/green]", EXIT_MISSING: f"[red]{len(report.missing)} missing[/red]",
               EXIT_CONFIG: "[red]the config cannot run[/red]"}[report.exit_code]
    console.print(f"[bold]dry run[/bold] {report.trials} trials, labels in all: {total}; {verdict} "
                  f"(exit {report.exit_code})")
