"""The sweep: embed once, then fan the method x dataset x budget x seed grid out with Ray Tune.

Order of work in :func:`run_sweep`:

1. validate the config (names, options, budgets against pool sizes) before Ray starts;
2. embed every dataset's pool and test split with Ray Data, outside Tune (Ray
   Data inside trials would compete with them for CPUs);
3. put each dataset's arrays in the object store once; trials and their tasks
   receive references;
4. reconcile MLflow with the on-disk trial store (rounds a killed driver never
   logged are logged now), skip finished trials, resume unfinished ones;
5. run the remaining trials with Tune (FailureConfig retries; a failing
   trial is marked FAILED in MLflow and the others go on).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import SweepConfig
from .loop import ActiveLearningRun, RoundState, TrialData
from .trial_store import TrialStore


@dataclass
class SweepOutcome:
    experiment: str
    tracking_uri: str
    parent_run_id: str
    trials: int
    skipped: int
    resumed: int
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    mlflow_log_seconds: list[float] = field(default_factory=list)
    unlogged: int = 0  # tracking calls the server never took (their rounds are in the trial store)
    tracking_outages: int = 0


def metric_for(card) -> str:
    return "auc" if card.metric == "auc" else "top1"


def _requires_any(config: SweepConfig, tokens: set[str], kinds: tuple[str, ...], dataset: str | None) -> bool:
    """Whether a plug-in of the given kinds, of a method that runs on ``dataset`` (None: any), declares a token."""
    from methods.registry import ACQUISITIONS, ADAPTATIONS

    registries = {"acquisition": ACQUISITIONS, "adaptation": ADAPTATIONS}
    return any(tokens & registries[kind].create(name, **opts).requires
               for m in config.methods if dataset is None or m.runs_on(dataset)
               for kind, name, opts in m.parts() if kind in kinds)


def uses_descriptions(config: SweepConfig, dataset: str | None = None) -> bool:
    """Whether a learner of the sweep (evaluated or selector; on ``dataset`` when given) declares ``descriptions``.

    Only then are the cards' description files read, so a card that names a file not yet on disk
    does not stop sweeps that never use it.
    """
    from methods.base import DESCRIPTIONS

    return _requires_any(config, {DESCRIPTIONS}, ("adaptation",), dataset)


def sweep_descriptions(config: SweepConfig) -> dict[str, dict[str, list[str]]]:
    """Each dataset's description-file sentences (datasets.descriptions), read on the driver before Ray starts.

    Empty when no learner uses descriptions; a dataset whose card names no file is absent (its
    attributes apply). A missing file or a file missing classes raises, naming the path and the fix.
    """
    from datasets.descriptions import card_descriptions
    from datasets.registry import get_card

    loaded = {n: card_descriptions(get_card(n)) for n in config.datasets if uses_descriptions(config, n)}
    return {n: d for n, d in loaded.items() if d is not None}


def uses_attributes(config: SweepConfig, dataset: str | None = None) -> bool:
    """Whether a plug-in of the sweep (of a method on ``dataset`` when given) reads attribute sentences
    (directly or through their embeddings)."""
    from methods.base import ATTRIBUTES, prepared

    return _requires_any(config, {ATTRIBUTES, prepared("attribute_embeddings")}, ("acquisition", "adaptation"),
                         dataset)


def sweep_attributes(config: SweepConfig) -> dict[str, dict[str, dict[str, list[str]]]]:
    """Each dataset's attribute sentences; the cards' attribute files are read only when a plug-in uses them,
    on the driver before Ray starts (a missing file fails naming its path)."""
    from datasets.attributes import card_attributes
    from datasets.registry import get_card

    return {n: card_attributes(get_card(n)) if uses_attributes(config, n) else
            {c: a.model_dump() for c, a in get_card(n).attributes.items()} for n in config.datasets}


def prepare_data(config: SweepConfig, descriptions: dict[str, dict[str, list[str]]] | None = None,
                 attributes: dict[str, dict] | None = None, blackbox_url: str | None = None) -> dict[str, dict]:
    """Embed (or reuse) every split the sweep needs and put the arrays in the object store once."""
    import ray

    from datasets.registry import get_card

    from .images import DatasetImages

    cache = _cache_root(config)
    descriptions = sweep_descriptions(config) if descriptions is None else descriptions
    attributes = sweep_attributes(config) if attributes is None else attributes
    refs: dict[str, dict] = {}
    steps = _preparation_names(config)  # the preparation steps some plug-in of the sweep declares
    by_options: dict[str, list[str]] = {}
    for name in config.datasets:
        key = repr(sorted(config.dataset_options.get(name, {}).items()))
        by_options.setdefault(key, []).append(name)
    cached, texts = _embed_everything(config, list(by_options.values()), cache)
    for names in by_options.values():
        opts = config.dataset_options.get(names[0], {})
        for n in names:
            card = get_card(n)
            pool_split, test_split = config.splits_of(n)
            pool, test = cached[(n, pool_split)], cached[(n, test_split)]
            text = texts[n]
            _check_features(n, pool.features, test.features)
            images = DatasetImages(n, {"pool": pool_split, "test": test_split},
                                   {"pool": np.asarray(pool.indices), "test": np.asarray(test.indices)},
                                   config.encoder, dict(opts), card_files=tuple(config.card_paths))
            refs[n] = {
                "pool_features": ray.put(np.asarray(pool.features, dtype=np.float32)),
                "pool_labels": ray.put(np.asarray(pool.labels)),
                "test_features": ray.put(np.asarray(test.features, dtype=np.float32)),
                "test_labels": ray.put(np.asarray(test.labels)),
                "text_features": ray.put(text),
                "task": card.task, "num_classes": card.num_classes, "metric": metric_for(card),
                "pool_size": len(pool), "pool_identity": pool.manifest["checksum"],
                "encoder": config.encoder, "precision": config.precision, "class_names": list(card.classes),
                "templates": card.prompts(config.protocol),
                "attributes": attributes[n],
                "images": images,
                "blackbox": _blackbox_spec(config, card, blackbox_url),
                "prepared": _prepared(config, steps, n, cache, pool, images),
                "class_descriptions": descriptions.get(n, {}),
                "oracle_labels": _oracle_labels(n, pool_split, opts, pool),
            }
    return refs


def _embed_everything(config: SweepConfig, groups: list[list[str]], cache: Path) -> tuple[dict, dict]:
    """Every split's cached features and every dataset's class-text features, from one set of encoder actors.

    The session ends before any trial or preparation step runs, so its actors hold no CPU or GPU they need.
    """
    from datasets.registry import get_card

    from .encoder_pool import encoder_session
    from .features import EmbedOptions, embed_splits

    cached, texts = {}, {}
    with encoder_session():
        for names in groups:  # datasets with the same source options share one pipeline
            requests = [(n, s) for n in names for s in config.splits_of(n)]
            cached |= embed_splits(requests, config.encoder, cache, EmbedOptions(),
                                   source_options=config.dataset_options.get(names[0], {}), address=config.address)
            texts |= {n: class_text_features(config, get_card(n), cache) for n in names}
    return cached, texts


def _cache_root(config: SweepConfig) -> Path:
    from .features import DEFAULT_CACHE

    return Path(config.cache).expanduser() if config.cache else DEFAULT_CACHE


def class_text_features(config: SweepConfig, card, cache: Path) -> np.ndarray:
    """(C, D) zero-shot class directions: the template ensemble, or for a multi-label card t+ − t−.

    A multi-label task scores each label alone: its probability is the softmax over the label's positive
    and negative prompt, i.e. sigmoid(x·(t+ − t−)/T), so the rows are left unnormalised differences.
    """
    from .features import embed_class_texts
    from .zeroshot import class_embeddings

    def ensemble(templates=None):
        return class_embeddings(embed_class_texts(card.name, config.encoder, cache, config.protocol, config.address,
                                                  templates)["embeddings"])

    positive = ensemble()
    return positive - ensemble(card.negative_templates) if card.task == "multilabel" else positive


def _oracle_labels(dataset: str, split: str, options: dict, pool):
    """The oracle's answers per cached pool row when the source has a noisy oracle (synthetic label noise).

    Only synthetic sources can have one; real ones are not reopened (a cluster may run from the cache alone).
    """
    import ray

    from datasets.registry import get_card, open_split

    if get_card(dataset).source.kind != "synthetic":
        return None
    source = open_split(dataset, split, **options)
    answers = getattr(source, "oracle_labels", None)
    if answers is None or np.array_equal(answers, source.labels):
        return None
    return ray.put(np.asarray(answers)[np.asarray(pool.indices)])


def _blackbox_spec(config: SweepConfig, card, url: str | None = None):
    """What trials open: the local zero-shot black box, or the same one behind an HTTP endpoint."""
    if config.blackbox is None:
        return None
    from methods.core.blackbox import ClipBlackBoxSpec, ServedBlackBoxSpec

    url = url or config.blackbox.url
    if url:
        return ServedBlackBoxSpec(url, card.name, card.num_classes)
    negatives = tuple(card.negative_templates) if card.task == "multilabel" else ()
    return ClipBlackBoxSpec(config.blackbox.encoder, tuple(card.classes), tuple(card.prompts(config.protocol)),
                            config.blackbox.temperature, config.precision, negative_templates=negatives)


def start_blackbox_server(config: SweepConfig) -> str | None:
    """With ``blackbox: {serve: true}``: serve every dataset's black box with Ray Serve; returns the base URL."""
    if config.blackbox is None or not config.blackbox.serve:
        return None
    from datasets.registry import get_card

    from .serving import serve_blackboxes

    specs = {n: _blackbox_spec(config, get_card(n)) for n in config.datasets}
    return serve_blackboxes(specs, config.blackbox.port)


def _log_served_queries(queue, parent: str, url: str, datasets: list[str]) -> None:
    """The server's own query counts, on the sweep's parent run (``served_queries/<dataset>``); then stop it."""
    from methods.core.blackbox import served_queries

    from .serving import stop_blackboxes

    for dataset in datasets:
        queue.call("log_sweep_metric", parent, f"served_queries/{dataset}", served_queries(url, dataset))
    stop_blackboxes(datasets)


def _preparation_names(config: SweepConfig) -> list[str]:
    """Every preparation step a plug-in of the sweep declares (``prepared:NAME`` in its ``requires``)."""
    from methods.registry import ACQUISITIONS, ADAPTATIONS

    from .preparation import requested_names

    from methods.preparation import SHARED_PREPARATIONS  # computed across datasets (shared_preparation)

    registries = {"acquisition": ACQUISITIONS, "adaptation": ADAPTATIONS}
    plugins = [registries[kind].create(name, **opts) for m in config.methods for kind, name, opts in m.parts()]
    return [n for n in requested_names({t for p in plugins for t in p.requires}) if n not in SHARED_PREPARATIONS]


def _prepared(config: SweepConfig, names: list[str], dataset: str, cache: Path, pool, images) -> dict[str, dict]:
    """Run (or reuse from the cache) the preparation steps ``names`` for one dataset; arrays go to the store."""
    import ray

    from .preparation import card_inputs, run_preparations

    if not names:
        return {}
    done = run_preparations(
        [(dataset, name, {}) for name in names], cache, config.encoder, config.precision,
        inputs_for=lambda d: card_inputs(d, config.encoder, config.precision, pool_features=pool.features,
                                         images=images, identity={"pool": pool.manifest["checksum"]}))
    return {name: {k: ray.put(v) for k, v in done[(dataset, name)].arrays.items()} for name in names}


def _check_features(name: str, *arrays) -> None:
    for a in arrays:
        if len(a) == 0:
            raise ValueError(f"{name}: a split has no embedded images; check the dataset")
        finite = np.isfinite(np.asarray(a[: min(len(a), 100_000)], dtype=np.float32)).all()
        if not finite:
            raise ValueError(f"{name}: cached features contain NaN or inf; delete the cache directory and re-embed "
                             "(check the encoder's precision setting)")


def build_run(trial: dict, data: dict, remote: bool = True, num_cpus: float = 1.0, num_gpus: float = 0.0):
    from pydantic import TypeAdapter

    from .budget import BudgetSchedule

    schedule = TypeAdapter(BudgetSchedule).validate_python(trial["budget"])
    method = trial["method"]
    selector = method.get("selector")
    return ActiveLearningRun(
        acquisition=(method["acquisition"], method["acquisition_options"]),
        adaptation=(method["adaptation"], method["adaptation_options"]),
        schedule=schedule, rounds_total=trial["rounds"], seed=trial["seed"],
        data=TrialData(**{k: data[k] for k in ("pool_features", "pool_labels", "test_features", "test_labels",
                                               "text_features", "task", "num_classes", "metric", "encoder",
                                               "precision", "class_names", "templates", "attributes", "images",
                                               "blackbox", "prepared", "class_descriptions", "oracle_labels")
                          if k in data}),
        cold_start=trial["cold_start"], remote=remote, num_cpus=num_cpus, num_gpus=num_gpus,
        plugins=tuple(trial.get("plugins", ())),
        selector=(selector["adaptation"], selector["adaptation_options"]) if selector else None,
        adaptation_labels=method.get("adaptation_labels", "all"), selector_labels=method.get("selector_labels", "all"),
    )


def trial_function(config: dict, data_refs: dict) -> None:
    """One Tune trial = one active-learning run, resumed from the newest checkpoint available."""
    import tempfile

    from ray import tune

    trial = config["trial"]
    store = TrialStore(config["store_root"])
    run = build_run(trial, data_refs[trial["dataset"]], num_cpus=config["task_cpu"], num_gpus=config["task_gpu"])
    resume = _newest(_from_tune_checkpoint(tune.get_checkpoint()), store.load(trial["config_hash"]))
    if resume is not None and resume.finished:
        return
    persist_prev = 0.0  # seconds the previous round spent on checkpoint + report (orchestration overhead)
    for state, metrics, queried in run.rounds(resume):
        t0 = time.perf_counter()
        store.save(trial["config_hash"], state)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "round-state.npz").write_bytes(state.to_bytes())
            tune.report({"round": state.round, "al": metrics, "queried": queried, "persist_seconds_prev": persist_prev},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        persist_prev = time.perf_counter() - t0


def _from_tune_checkpoint(checkpoint) -> RoundState | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return RoundState.from_bytes(Path(d, "round-state.npz").read_bytes())


def _newest(*states: RoundState | None) -> RoundState | None:
    present = [s for s in states if s is not None]
    return max(present, key=lambda s: s.round) if present else None


def reconcile(tracker, store: TrialStore, trials: list[dict], parent_run_id: str) -> tuple[set[str], dict[str, int]]:
    """Bring MLflow up to date with the trial store; return finished hashes and resumable hash -> last round."""
    finished, resumable = set(), {}
    for trial in trials:
        state = store.load(trial["config_hash"])
        if state is None:
            continue
        for r, metrics in enumerate(state.history):
            if r > tracker.last_round(trial["config_hash"]):
                tracker.log_round(trial, metrics, state.selections[r] if r < len(state.selections) else None,
                                  parent_run_id)
        if state.finished:
            if not tracker.finished(trial["config_hash"]):
                tracker.finish(trial)
            finished.add(trial["config_hash"])
        else:
            resumable[trial["config_hash"]] = state.round
    return finished, resumable


def run_sweep(config: SweepConfig, console=None, extra_callbacks: list | None = None) -> SweepOutcome:
    """Run (or resume) the sweep; a second sweep on the same workdir is refused (:mod:`.workdir_lock`)."""
    from .workdir_lock import workdir_lock

    with workdir_lock(config.workdir_path, config.name):
        return _run_sweep(config, console, extra_callbacks)


def _run_sweep(config: SweepConfig, console=None, extra_callbacks: list | None = None) -> SweepOutcome:
    # Tune's newer console output prints banners even at verbose=0; progress is ours (rich) instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    from .ray_runtime import ensure_ray
    from .shared_storage import check_shared_paths
    from .shared_preparation import run_shared_preparations
    from .tracking_access import check_tracking_server
    from .tracking import MLflowTuneCallback, ProgressCallback, TrialTracker
    from .tracking_outage import fail_fast

    t0 = time.time()
    workdir = config.workdir_path
    workdir.mkdir(parents=True, exist_ok=True)
    descriptions = sweep_descriptions(config)  # a missing description file fails before Ray starts
    attributes = sweep_attributes(config)  # so does a missing attribute file
    _refuse_impossible_budgets(config)  # so does a budget larger than a pool on disk
    check_tracking_server(config.tracking_uri)  # so does an unreachable MLflow server or a wrong password
    ensure_ray(config.address)
    nodes = check_shared_paths({"trial store": workdir / "trials", "Tune storage path": _storage_path(config)})
    if nodes > 1:
        _say(console, f"trial store and Tune storage path are shared and writable on all {nodes} nodes")
    served = start_blackbox_server(config)
    if served:
        _say(console, f"black box served with Ray Serve at {served}/<dataset>")
    _say(console, f"embedding {len(config.datasets)} dataset(s) with {config.encoder} (cached after the first run)")
    t_embed = time.time()
    data = prepare_data(config, descriptions, attributes, blackbox_url=served)
    run_shared_preparations(config, data, _cache_root(config), say=lambda text: _say(console, text))
    embed_seconds = time.time() - t_embed

    trials = config.trials()
    for trial in trials:
        trial["metric"] = data[trial["dataset"]]["metric"]
        build_run(trial, {**data[trial["dataset"]]}, remote=False)  # budget vs pool checks, before Tune starts
    fail_fast()  # a dead tracking server costs a queued call, not minutes of MLflow's retries
    tracker = TrialTracker(config.tracking_uri, config.experiment)
    parent = tracker.start_sweep(config.name, config.model_dump(mode="json"))
    store = TrialStore(workdir / "trials")
    finished, resumable = reconcile(tracker, store, trials, parent)
    pending = [t for t in trials if t["config_hash"] not in finished]
    _say(console, f"{len(trials)} trials: {len(finished)} already finished, {len(resumable)} to resume, "
                  f"{len(pending) - len(resumable)} new")
    callback = MLflowTuneCallback(tracker, parent, say=lambda text: _say(console, text))
    failed: list[str] = []
    if pending:
        # Rounds still to report: all of them (round 0 included) for a new trial, the rest for a resumed one.
        rounds_left = sum(t["rounds"] - resumable[t["config_hash"]] if t["config_hash"] in resumable
                          else t["rounds"] + 1 for t in pending)
        progress = [ProgressCallback(len(pending), rounds_left, console)] if console is not None else []
        bundles = [{"CPU": config.resources.driver_cpu},
                   {"CPU": config.resources.cpu, **({"GPU": config.resources.gpu} if config.resources.gpu else {})}]
        trainable = tune.with_resources(tune.with_parameters(trial_function, data_refs=data),
                                        tune.PlacementGroupFactory(bundles))
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(pending), "store_root": str(store.root),
                         "task_cpu": config.resources.cpu, "task_gpu": config.resources.gpu},
            tune_config=tune.TuneConfig(max_concurrent_trials=config.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(_storage_path(config)),
                callbacks=[callback, *progress, *(extra_callbacks or [])],
                failure_config=tune.FailureConfig(max_failures=config.retries),
                verbose=0,
            ),
        )
        grid = tuner.fit()
        failed = [trial_name(r.config["trial"]) for r in grid if r.error is not None]
    if served:
        _log_served_queries(callback.queue, parent, served, config.datasets)
    callback.queue.call("end_sweep", parent, "FAILED" if failed else "FINISHED")
    if not callback.queue.drain_within(config.tracking.wait_seconds):
        _say(console, f"[red]MLflow did not answer for {config.tracking.wait_seconds:.0f} s; "
                      f"{len(callback.queue.pending)} call(s) not logged[/red]")
    return SweepOutcome(config.experiment, config.tracking_uri, parent, len(trials), len(finished),
                        len(resumable), failed, time.time() - t0, embed_seconds, callback.log_seconds,
                        unlogged=len(callback.queue.pending), tracking_outages=callback.queue.outages)


def _refuse_impossible_budgets(config: SweepConfig) -> None:
    from .budget import BudgetError
    from .dry_run import certain_budget_errors

    errors = certain_budget_errors(config)
    if errors:
        raise BudgetError("; ".join(errors))


def trial_name(trial: dict) -> str:
    """The trial's MLflow run name with its config hash: method | dataset | budget | seed (hash)."""
    from .tracking import run_name

    return f"{run_name(trial)} ({trial['config_hash']})"


def _storage_path(config: SweepConfig) -> Path:
    return Path(os.environ.get("ALVLM_STORAGE_PATH", config.workdir_path / "ray_results")).expanduser()


def _say(console, message: str) -> None:
    if console is not None:
        console.print(f"[bold]sweep[/bold] {message}")
