"""Sweep configuration: a YAML file plus ``--set key=value`` overrides, validated strictly.

Unknown keys are errors with a suggestion (``"round"`` -> did you mean
``"rounds"``?), method and dataset names are checked against the registries
before Ray starts, and every trial's resolved config is hashed canonically so
that the hash identifies the trial on disk and in MLflow.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .budget import BudgetSchedule

#: Round 1 of a run: "none" = the strategy's usual select on zero-shot predictions (no initial labels),
#: "method" = the strategy's own cold_start() (its select unless it has one), or the name of any
#: registered strategy whose cold_start() picks round 1 instead: "random", "typiclust", "centroid", ...
ColdStart = str


class ConfigError(ValueError):
    """A sweep config that cannot run; the message names the key and the fix."""


class SelectorConfig(BaseModel):
    """A learner fitted every round only for the strategy to select with (the evaluated one is ``adaptation``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adaptation: str
    adaptation_options: dict[str, Any] = Field(default_factory=dict)


LabelSet = Literal["all", "queried"]


class MethodConfig(BaseModel):
    """A named combination of an acquisition strategy and an adaptation learner (and maybe a selector)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    acquisition: str
    adaptation: str
    acquisition_options: dict[str, Any] = Field(default_factory=dict)
    adaptation_options: dict[str, Any] = Field(default_factory=dict)
    cold_start: ColdStart | None = None  # None: the sweep's default
    selector: SelectorConfig | None = None
    adaptation_labels: LabelSet = Field("all", description="'queried': the evaluated learner ignores free labels")
    selector_labels: LabelSet = "all"
    datasets: list[str] | None = Field(None, description="run on these of the sweep's datasets only; None: all")
    budgets: list[str] | None = Field(None, description="run under these of the sweep's budgets only; None: all "
                                                        "(a few-shot learner beside pool-fraction ones)")

    def runs_on(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets

    def runs_under(self, budget: str) -> bool:
        return self.budgets is None or budget in self.budgets

    def parts(self) -> list[tuple[str, str, dict]]:
        """``(kind, name, options)`` of its strategy, its learner and its selector: what the registries build."""
        parts = [("acquisition", self.acquisition, self.acquisition_options),
                 ("adaptation", self.adaptation, self.adaptation_options)]
        if self.selector is not None:
            parts.append(("adaptation", self.selector.adaptation, self.selector.adaptation_options))
        return parts

    @classmethod
    def parse(cls, item: str | dict) -> "MethodConfig":
        """``"entropy+linear_probe"`` or a dict with explicit parts and options."""
        if isinstance(item, str):
            if item.count("+") != 1:
                raise ConfigError(f"method {item!r} must be written ACQUISITION+ADAPTATION, e.g. entropy+linear_probe")
            acq, ada = item.split("+")
            return cls(name=item, acquisition=acq, adaptation=ada)
        if not isinstance(item, dict):
            raise ConfigError(f"a method is 'ACQUISITION+ADAPTATION' or a mapping with acquisition: and adaptation:, "
                              f"got {item!r}")
        item = dict(item)
        item.setdefault("name", f"{item.get('acquisition')}+{item.get('adaptation')}")
        return cls(**item)


def _per_dataset_settings(entries: list[MethodConfig]) -> bool:
    """Whether same-named entries are one method with per-dataset options (a paper's per-dataset lambdas)."""
    if len({(m.acquisition, m.adaptation) for m in entries}) > 1 or any(m.datasets is None for m in entries):
        return False
    listed = [d for m in entries for d in m.datasets]
    return len(listed) == len(set(listed))


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float = Field(0.9, gt=0, description="CPUs for a trial's select/adapt tasks")
    gpu: float = Field(0.0, ge=0, description="GPUs (fractions allowed) for a trial's tasks")
    driver_cpu: float = Field(0.1, gt=0, description="CPU held by the trial process itself")


class Tracking(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = None  # default: sqlite:///<workdir>/mlflow.db
    experiment: str | None = None  # default: the sweep name
    wait_seconds: float = Field(300.0, ge=0, description="how long the end of a sweep waits for a tracking server "
                                "that stopped answering before it gives up (the next run logs what is left)")


class BlackBoxConfig(BaseModel):
    """The foundation model behind an API that black-box methods query (counted, distributions only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str = Field("tiny-clip", description="the open_clip model answering queries, zero-shot")
    temperature: float = Field(0.01, gt=0)
    cost_per_1000: float | None = Field(None, ge=0, description="price of 1,000 queries, for the report")
    serve: bool = Field(False, description="serve it over HTTP with Ray Serve on the cluster; trials query the URL")
    url: str | None = Field(None, description="an endpoint already serving it (orchestrator/serving.py protocol)")
    port: int = Field(8000, ge=1, le=65535, description="the port `serve` binds on 127.0.0.1")

    #: How the black box is reached, not what it answers: kept out of the trial hash (served = local).
    TRANSPORT: ClassVar[frozenset[str]] = frozenset({"serve", "url", "port"})

    @model_validator(mode="after")
    def _one_transport(self):
        if self.serve and self.url:
            raise ValueError("blackbox: set `serve: true` (the sweep serves it) or `url:` (someone else does), "
                             "not both")
        return self

    def answers(self) -> dict:
        """What determines the answers (the trial hash's part)."""
        return self.model_dump(exclude=set(self.TRANSPORT))


class ReportConfig(BaseModel):
    """What the sweep's own report adds to the comparison tables (experiments/report.py's flags, as config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: str | None = Field(None, description="method the label-efficiency tables test every other against")
    paper: str | None = Field(None, description="experiments/references/<paper>.yaml: its numbers beside the rows")
    claims: list[str] | Literal["all"] = Field(default_factory=list,
                                               description="papers whose claims to check at the end (or 'all')")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    encoder: str = "tiny-clip"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    datasets: list[str]
    dataset_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    protocol: str = "default"
    pool_split: str = "train"
    test_split: str = "test"
    dataset_splits: dict[str, dict[Literal["pool", "test"], str]] = Field(
        default_factory=dict, description="per dataset, split names replacing pool_split / test_split "
                                          "(CheXpert has no test split: {chexpert: {test: val}})")
    methods: list[MethodConfig]
    plugins: list[str] = Field(default_factory=list, description="modules or .py files that register plug-ins")
    cards: list[str] = Field(default_factory=list, description="dataset card YAML files outside the package")
    blackbox: BlackBoxConfig | None = None
    budgets: dict[str, BudgetSchedule]
    seeds: list[int] = Field(default_factory=lambda: [0])
    rounds: int = Field(5, ge=1)
    cold_start: ColdStart = "none"
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)
    retries: int = Field(1, ge=0)
    workdir: str = "runs"
    cache: str | None = None
    tracking: Tracking = Field(default_factory=Tracking)
    report: ReportConfig = Field(default_factory=ReportConfig)
    address: str | None = None

    @field_validator("methods", mode="before")
    @classmethod
    def _parse_methods(cls, items):
        if not items:
            raise ValueError("at least one method is needed, e.g. random+zeroshot")
        if not isinstance(items, list):
            raise ValueError(f"methods is a list (of 'ACQUISITION+ADAPTATION' or mappings), got {items!r}")
        methods = [MethodConfig.parse(m) if not isinstance(m, MethodConfig) else m for m in items]
        names = [m.name for m in methods]
        twice = sorted(n for n in set(names) if names.count(n) > 1 and not _per_dataset_settings(
            [m for m in methods if m.name == n]))
        if twice:
            raise ValueError(f"methods {twice} appear more than once; methods that differ only in options need "
                             "distinct names (add `name: ...`), or the report would merge them. One method may "
                             "repeat its name only to set options per dataset: the same acquisition and "
                             "adaptation, each entry with its own `datasets:`, no dataset in two entries")
        return methods

    @model_validator(mode="after")
    def _method_datasets(self):
        for method in self.methods:
            for kind, listed, known, verb in (("datasets", method.datasets, self.datasets, "run"),
                                              ("budgets", method.budgets, sorted(self.budgets), "define")):
                unknown = sorted(set(listed or ()) - set(known))
                if listed is not None and (unknown or not listed):
                    raise ValueError(f"method {method.name!r} lists {kind} {unknown or '[]'} that the sweep does not "
                                     f"{verb}; its `{kind}:` must name some of {known}")
        names = [m.name for m in self.methods]
        if self.report.baseline is not None and self.report.baseline not in names:
            raise ValueError(f"report.baseline {self.report.baseline!r} is not a method of this sweep; its methods: "
                             f"{names}")
        return self

    @field_validator("datasets", "seeds")
    @classmethod
    def _non_empty(cls, items):
        if not items:
            raise ValueError("must not be empty")
        if len(set(map(str, items))) != len(items):
            raise ValueError(f"has duplicates: {items}")
        return items

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, budgets):
        if not budgets:
            raise ValueError("at least one budget schedule is needed, e.g. {per_class_1: {kind: per_class, multiple: 1}}")
        return budgets

    # ------------------------------------------------------------- derived

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    @property
    def card_paths(self) -> list[str]:
        """The user card files, resolved against the working directory (workers may run elsewhere)."""
        return [str(Path(c).expanduser().resolve()) for c in self.cards]

    @property
    def tracking_uri(self) -> str:
        """The config's URI, else $MLFLOW_TRACKING_URI (set on cluster heads), else SQLite in the workdir."""
        import os

        return self.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.workdir_path / 'mlflow.db'}"

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def splits_of(self, dataset: str) -> tuple[str, str]:
        """(pool split, test split) of a dataset: the sweep's, unless ``dataset_splits`` renames them."""
        own = self.dataset_splits.get(dataset, {})
        return own.get("pool", self.pool_split), own.get("test", self.test_split)

    def trials(self) -> list[dict]:
        """The grid, one resolved config per trial, each with its ``config_hash``."""
        out = []
        for dataset, method, (budget_name, budget), seed in itertools.product(
                self.datasets, self.methods, self.budgets.items(), self.seeds):
            if not (method.runs_on(dataset) and method.runs_under(budget_name)):
                continue
            trial = {
                "dataset": dataset,
                "dataset_options": self.dataset_options.get(dataset, {}),
                "method": _resolved_method(method),
                "cold_start": method.cold_start or self.cold_start,
                "budget_name": budget_name,
                "budget": budget.model_dump(),
                "seed": seed,
                "rounds": self.rounds,
                "encoder": self.encoder,
                "precision": self.precision,
                "protocol": self.protocol,
                "pool_split": self.splits_of(dataset)[0],
                "test_split": self.splits_of(dataset)[1],
                "plugins": list(self.plugins),
            }
            # Newer keys enter a trial only when set, so configs that do not use them keep their hashes.
            if self.cards:
                trial["cards"] = self.card_paths
            if self.blackbox is not None:
                trial["blackbox"] = self.blackbox.answers()
            trial["config_hash"] = config_hash(trial)
            out.append(trial)
        return out


def _resolved_method(method: MethodConfig) -> dict:
    from methods.registry import ACQUISITIONS, ADAPTATIONS

    resolved = method.model_dump()
    del resolved["datasets"], resolved["budgets"]  # the trial names both; the method's lists only shape the grid
    resolved["acquisition_options"] = ACQUISITIONS.resolve_options(method.acquisition, method.acquisition_options)
    resolved["adaptation_options"] = ADAPTATIONS.resolve_options(method.adaptation, method.adaptation_options)
    if method.selector is None:  # keys added after the first release enter the hash only when used
        del resolved["selector"]
    else:
        resolved["selector"]["adaptation_options"] = ADAPTATIONS.resolve_options(
            method.selector.adaptation, method.selector.adaptation_options)
    for key in ("adaptation_labels", "selector_labels"):
        if resolved[key] == "all":
            del resolved[key]
    return resolved


def config_hash(trial: dict) -> str:
    """Canonical-JSON hash of a resolved trial config: the trial's identity everywhere."""
    payload = {k: v for k, v in trial.items() if k != "config_hash"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


# ----------------------------------------------------------------- loading


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``--set a.b=value``: VALUE is parsed as YAML (numbers, lists, dicts, strings)."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def _explain(exc: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, err["loc"][:-1])
            fields = list(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"unknown key {loc!r}: {hint}known keys here: {', '.join(fields)}")
        else:
            lines.append(f"{loc or 'config'}: {err['msg']}")
    return "invalid sweep config:\n  " + "\n  ".join(lines)


def _model_at(model: type[BaseModel], loc) -> type[BaseModel] | None:
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part)) if current else None
        if field is None:
            return current if not loc else None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        candidates = [ann, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return current


def load_config(path: str | Path | None, overrides: list[str] | None = None, default: Path | None = None) -> SweepConfig:
    path = Path(path) if path else default
    if path is None or not Path(path).is_file():
        raise ConfigError(f"sweep config not found: {path}")
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep config is a YAML mapping")
    raw = apply_overrides(raw, overrides or [])
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, SweepConfig)) from None
    validate_names(config)
    return config


def validate_names(config: SweepConfig) -> None:
    """Check cards, datasets, strategies, learners, their options and their pairing before any trial starts."""
    from datasets.registry import load_card_files
    from methods.registry import ACQUISITIONS, load_plugins

    errors = []
    try:
        load_plugins(config.plugins)
    except Exception as exc:  # an import error in user code: report it, do not start Ray
        raise ConfigError(f"could not load plug-ins {config.plugins}: {type(exc).__name__}: {exc}") from exc
    try:
        load_card_files(config.cards)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load dataset cards: {exc}") from exc
    errors += _dataset_errors(config)
    for method in config.methods:
        errors += _method_errors(method, has_blackbox=config.blackbox is not None)
    if not errors:
        errors += _multilabel_errors(config) + _shared_errors(config)
    for cold in {config.cold_start, *(m.cold_start for m in config.methods if m.cold_start)}:
        if cold not in ("none", "method"):
            try:
                ACQUISITIONS.get(cold)
            except KeyError as exc:
                errors.append(f"cold_start: {exc.args[0]} (or 'none' / 'method')")
    if errors:
        raise ConfigError("invalid sweep config:\n  " + "\n  ".join(errors))


def _shared_errors(config: SweepConfig) -> list[str]:
    """A VALIANT_Multi union the sweep cannot build (no black box, datasets it does not run, overlaps)."""
    from .shared_preparation import shared_requests

    try:
        shared_requests(config)
    except ValueError as exc:
        return [str(exc)]
    return []


def _dataset_errors(config: SweepConfig) -> list[str]:
    from datasets.registry import get_card

    errors = [f"dataset_splits names {name!r}, which the sweep does not run (datasets: {config.datasets})"
              for name in config.dataset_splits if name not in config.datasets]
    for name in config.datasets:
        try:
            card = get_card(name)
            if not set(config.splits_of(name)) <= set(card.splits):
                errors.append(f"dataset {name!r} has splits {sorted(card.splits)}; set pool_split/test_split, "
                              f"or for this dataset alone `dataset_splits: {{{name}: {{test: ...}}}}`")
        except KeyError as exc:
            errors.append(str(exc.args[0]))
    return errors


def _multilabel_errors(config: SweepConfig) -> list[str]:
    """Plug-ins that cannot handle the (n, C) 0/1 labels of a multi-label dataset they would run on."""
    from datasets.registry import get_card
    from methods.registry import ACQUISITIONS, ADAPTATIONS

    multilabel = [n for n in config.datasets if get_card(n).task == "multilabel"]
    if not multilabel:
        return []
    registries = {"acquisition": ACQUISITIONS, "adaptation": ADAPTATIONS}

    def capable(kind):
        return sorted(n for n in registries[kind].names() if getattr(registries[kind].get(n), "multilabel", False))

    errors = []
    for method in config.methods:
        on = [d for d in multilabel if method.runs_on(d)]
        unable = [(kind, part) for kind, part, opts in method.parts()
                  if on and not registries[kind].create(part, **opts).multilabel]
        errors += [f"method {method.name!r}: {kind} {part!r} cannot handle the multi-label task of {on} (0/1 label "
                   f"vectors); multi-label {kind}s: {capable(kind)} -- or restrict the method with `datasets:`"
                   for kind, part in unable]
    return errors


def _method_errors(method: MethodConfig, has_blackbox: bool) -> list[str]:
    """Unknown names, bad options, and a strategy asking more than its learner provides."""
    from methods.registry import ACQUISITIONS, ADAPTATIONS

    registries = {"acquisition": ACQUISITIONS, "adaptation": ADAPTATIONS}
    built, errors = [], []
    for kind, part, opts in method.parts():
        try:
            built.append(registries[kind].create(part, **opts))
        except (KeyError, ValueError, TypeError) as exc:
            errors.append(f"method {method.name!r}: {exc.args[0] if exc.args else exc}")
    if errors:
        return errors
    strategy, *learners = built
    return [f"method {method.name!r}: {e}" for e in pairing_errors(strategy, learners[-1], learners, has_blackbox)]


def pairing_errors(strategy, selecting, learners, has_blackbox: bool) -> list[str]:
    """What ``strategy`` declares that the data and the selecting learner's predictors cannot provide."""
    from methods.base import BLACKBOX, DATA_INPUTS, prepared_name
    from methods.preparation import PREPARATIONS, SHARED_PREPARATIONS

    errors = []
    missing = sorted(strategy.requires - DATA_INPUTS - selecting.provides - {t for t in strategy.requires
                                                                              if prepared_name(t)})
    if missing:
        errors.append(f"strategy {strategy.name!r} needs {missing}, which learner {selecting.name!r} does not "
                      f"provide (it provides {sorted(selecting.provides)}); pair it with a learner that does, "
                      "or give the method a `selector:` learner that does")
    plugins = [strategy, *learners]
    if not has_blackbox and any(BLACKBOX in p.requires for p in plugins):
        users = sorted({p.name for p in plugins if BLACKBOX in p.requires})
        errors.append(f"{users} query a black box, but the sweep configures none; add `blackbox: {{encoder: ...}}`")
    for token in sorted({t for p in plugins for t in p.requires
                         if prepared_name(t) and prepared_name(t) not in SHARED_PREPARATIONS}):
        try:
            PREPARATIONS.get(prepared_name(token))
        except KeyError as exc:
            errors.append(str(exc.args[0]))
    return errors
