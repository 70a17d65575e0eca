"""Seconds and peak memory of every acquisition strategy on a synthetic pool, next to scikit-activeml.

The pool is clustered and CLIP-like: C class centres on the unit sphere,
points = centre + Gaussian noise, L2-normalised; the class text features are
noisier copies of the centres, and the class probabilities are the zero-shot
predictor's ``softmax(x . T / 0.01)``. Everything is generated in blocks from
``--seed`` and cached as .npy files, so a 1.28M x 512 pool is generated once
and memory-mapped by every child.

Each strategy runs in a fresh child process (this script with a hidden
``--_worker`` flag), so its peak memory is its own: the child maps the cached
arrays, pages in the inputs the strategy declares in ``requires`` (as the
round loop hands them over), records its RSS as the baseline, resets the
kernel's high-water mark, and then times ``check_selection_inputs`` and
``select`` on the same SelectionContext the loop would build. Reported: the
median select seconds over ``--repeats``, peak RSS, working memory (peak minus
baseline: what the strategy allocates beyond its inputs) and, on CUDA,
``torch.cuda.max_memory_allocated``. Quality figures are computed afterwards in
this process from the selected rows (never timed): the k-center radius (the
largest distance of a pool point to its nearest labelled-or-selected point)
for diversity strategies, the mean typicality of the picks for typiclust, and
the delta-ball coverage for probcover.

``--compare-skactiveml`` runs scikit-activeml's counterpart of each strategy
in a child of its own on the same arrays (fixed probabilities through a tiny
classifier wrapper, ``fit_clf=False``) and prints the figures side by side
with the speed-up and the Jaccard overlap of the two selections. ProbCover
starts from the first ``--probcover-labelled`` labelled rows (default 0, its
cold start) on both sides: the pool's full labelled set already covers every
point at the purity delta, which would leave both sides only random fill-ins.
The last line of stdout is one JSON object.

    python benchmarks/acquisition_scale.py                          # n=20000, all registered strategies
    python benchmarks/acquisition_scale.py --compare-skactiveml --targets
    python benchmarks/acquisition_scale.py --n 100000 --targets     # every strategy <= 60 s and <= 4 GB
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_STRATEGIES = ("random", "entropy", "margin", "least_confidence", "bald", "coreset", "badge", "alfamix",
                      "typiclust", "probcover", "dropquery", "centroid", "pcb", "cec", "cb", "cbsq", "gcnal")
#: Strategies whose picks are judged by how well they cover the pool (random is the baseline row).
COVERAGE_STRATEGIES = frozenset({"random", "coreset", "badge", "typiclust", "probcover", "dropquery", "centroid",
                                 "alfamix", "pcb", "cb"})
#: scikit-activeml 1.0.1 counterparts: (class, constructor options).
REFERENCES = {
    "entropy": ("UncertaintySampling", {"method": "entropy"}),
    "margin": ("UncertaintySampling", {"method": "margin_sampling"}),
    "least_confidence": ("UncertaintySampling", {"method": "least_confident"}),
    "coreset": ("CoreSet", {}),
    "badge": ("Badge", {}),
    "typiclust": ("TypiClust", {}),
    "probcover": ("ProbCover", {}),
    "dropquery": ("DropQuery", {}),
}
#: What differs between the two sides, read from both codes (printed under the table).
REFERENCE_NOTES = {
    "coreset": "exact counterpart: same greedy k-center, same selection expected",
    "badge": "same inputs (fixed probabilities, embeddings = features); the D^2 draws come from different "
             "generators (RandomState vs Generator), so only the first pick (largest gradient norm) must agree",
    "typiclust": "skactiveml clusters into |L|+B clusters with sklearn KMeans (to convergence) and no cap; ours "
                 "caps K at max_clusters, runs kmeans_iters Lloyd steps and skips clusters of <= min_cluster_size "
                 "points; typicality k set to ours",
    "probcover": "each side estimates delta with its own purity rule (skactiveml: sklearn KMeans and the grid "
                 "0.2..2.0; ours: exact order statistic), inside the timed call; --probcover-shared-delta hands the "
                 "reference our delta instead (its purity search is then skipped)",
    "dropquery": "same dropout rate and number of masks; skactiveml zeroes features without the 1/(1-p) rescaling, "
                 "which does not change the argmax of a bias-free linear predictor; different random masks",
    "entropy": "same scores; ties go to a random row in skactiveml, to the lowest row in ours",
    "margin": "same ranking (1 - |p1 - p2| vs -(p1 - p2)); ties broken differently",
    "least_confidence": "same ranking (1 - max p vs -max p); ties broken differently",
}
NO_REFERENCE = {
    "random": "nothing to compare: two random draws",
    "bald": "skactiveml's GreedyBALD/BatchBALD take a fitted ensemble (or a sample_proba model), "
            "not our predictor's input perturbations; not compared",
    "alfamix": "no ALFA-Mix in scikit-activeml 1.0.1",
    "pcb": "no PCB in scikit-activeml 1.0.1",
    "centroid": "no centroid sampling in scikit-activeml 1.0.1",
    "cec": "no CEC in scikit-activeml 1.0.1",
    "cb": "no CB in scikit-activeml 1.0.1",
    "cbsq": "no CB+SQ in scikit-activeml 1.0.1",
    "gcnal": "no sequential GCN in scikit-activeml 1.0.1",
}
#: Targets of the performance issues: speed-up over scikit-activeml at n=20000 (>= 10x, issue 15; 3x before),
#: time and peak memory at the large sizes (<= 300 s at the ImageNet protocol, issue 15; 900 s before).
SPEEDUP_TARGET = {"n": 20000, "strategies": ("coreset", "badge", "typiclust", "probcover", "dropquery"), "min": 10.0}
RESOURCE_TARGETS = {100000: {"seconds": 60.0, "peak_gb": 4.0}, 1280000: {"seconds": 300.0, "peak_gb": 16.0}}

TEMPERATURE = 0.01
BLOCK = 65536
GENERATOR_VERSION = 1
TYPICALITY_K = 20  # TypiClust paper's k, used when the strategy declares none


# ------------------------------------------------------------------- data


def data_key(args) -> str:
    return (f"n{args.n}-d{args.dim}-c{args.classes}-l{args.labelled}-s{args.seed}"
            f"-noise{args.noise:g}-text{args.text_noise:g}-v{GENERATOR_VERSION}")


def generate(args, root: Path) -> tuple[Path, bool]:
    """The cached pool for these parameters (built block by block the first time); (path, was_cached)."""
    from methods.adaptation.zeroshot import LinearPredictor

    path = root / data_key(args)
    if (path / "meta.json").exists():
        return path, True
    n, d, c = args.n, args.dim, args.classes
    if args.labelled + args.budget > n:
        raise SystemExit(f"--labelled {args.labelled} + --budget {args.budget} exceed the pool of {n} rows")
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([args.seed, 0])
    centres = rng.standard_normal((c, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    text = centres + args.text_noise / np.sqrt(d) * rng.standard_normal((c, d))
    text = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)
    centres = centres.astype(np.float32)
    labels = np.random.default_rng([args.seed, 1]).integers(c, size=n)
    predictor = LinearPredictor(text, np.zeros(c, np.float32), TEMPERATURE)
    features = np.lib.format.open_memmap(tmp / "features.npy", "w+", np.float32, (n, d))
    probs = np.lib.format.open_memmap(tmp / "probs.npy", "w+", np.float32, (n, c))
    correct, max_prob = 0, 0.0
    for b, s in enumerate(range(0, n, BLOCK)):
        e = min(n, s + BLOCK)
        x = centres[labels[s:e]] + np.float32(args.noise / np.sqrt(d)) * \
            np.random.default_rng([args.seed, 2, b]).standard_normal((e - s, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        features[s:e] = x
        p = predictor.predict_proba(x)
        probs[s:e] = p
        correct += int((p.argmax(1) == labels[s:e]).sum())
        max_prob += float(p.max(1).sum(dtype=np.float64))
    features.flush()
    probs.flush()
    del features, probs
    labelled = np.sort(np.random.default_rng([args.seed, 3]).choice(n, args.labelled, replace=False))
    np.save(tmp / "labels.npy", labels)
    np.save(tmp / "text.npy", text)
    np.save(tmp / "labelled.npy", labelled)
    meta = {"n": n, "dim": d, "classes": c, "labelled": args.labelled, "seed": args.seed, "noise": args.noise,
            "text_noise": args.text_noise, "temperature": TEMPERATURE,
            "zeroshot_accuracy": round(correct / n, 4), "mean_max_prob": round(max_prob / n, 4)}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, path)
    except OSError:  # another run finished the same pool first
        shutil.rmtree(tmp, ignore_errors=True)
    return path, False


def add_pool_arguments(ap: argparse.ArgumentParser, n: int) -> None:
    """The pool's size and cache arguments, the same in this benchmark and the ones derived from it (so their
    defaults, and the cache they read, cannot drift apart); ``n``: the default row count."""
    ap.add_argument("--n", type=int, default=n, help="pool rows")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--labelled", type=int, default=1000)
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "alvlm-acquisition-scale"),
                    help="cache of generated pools (reused across runs)")


def default_pool(n: int, dim: int, classes: int, labelled: int, budget: int, data_dir: str) -> dict:
    """This benchmark's pool of these sizes at its default seed and noise (built on first use), loaded: what the
    benchmarks derived from it (``dropquery_precision.py``, ``cell_knn.py``) measure on."""
    spec = argparse.Namespace(n=n, dim=dim, classes=classes, budget=budget, labelled=labelled, seed=0, noise=1.0,
                              text_noise=5.0)
    return load(generate(spec, Path(data_dir))[0])


def load(path: Path) -> dict:
    """The cached arrays, memory-mapped (nothing is read until touched)."""
    out = {k: np.load(path / f"{k}.npy", mmap_mode="r") for k in ("features", "probs", "labels")}
    out["text"] = np.load(path / "text.npy")
    out["labelled"] = np.load(path / "labelled.npy")
    out["meta"] = json.loads((path / "meta.json").read_text())
    return out


def page_in(array: np.ndarray) -> None:
    """Touch every page of a memory-mapped array so it is resident before the baseline is taken."""
    for s in range(0, len(array), BLOCK):
        array[s: s + BLOCK].max()


# ----------------------------------------------------------------- memory


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the address space's RSS high-water mark (VmHWM; Linux >= 4.0), so the peak counts from here on."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS since the last reset: the address space's high-water mark (VmHWM).

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is the same figure but never below the
    high-water mark the process inherited at exec -- for a child started by
    fork+exec that is the parent's whole RSS -- so it is used only where
    /proc is missing.
    """
    hwm = _status_mb("VmHWM")
    return hwm if not math.isnan(hwm) else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def mem_available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return float("nan")


def mem_total_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3


# ----------------------------------------------------------------- workers


def _pool_state(data: dict, labelled_count: int | None = None):
    """(labelled rows, their labels, unlabelled rows); only the first ``labelled_count`` labelled rows if given."""
    labelled = np.asarray(data["labelled"], dtype=np.int64)[:labelled_count]
    mask = np.ones(len(data["features"]), bool)
    mask[labelled] = False
    return labelled, np.asarray(data["labels"][labelled], dtype=np.int64), np.flatnonzero(mask)


def _scalar_options(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if isinstance(v, (int, float, str, bool)) and not k.startswith("__")}


def worker_ours(job: dict) -> dict:
    """Build the loop's SelectionContext for one strategy, then time validation and selection."""
    import torch

    from methods.adaptation.zeroshot import LinearPredictor
    from methods.base import (CLASS_EMBEDDINGS, EMBEDDINGS, POOL_FEATURES, PREDICTOR, PROBS, TEXT_FEATURES,
                              SelectionContext)
    from methods.registry import ACQUISITIONS, load_plugins
    from methods.validation import check_selection_inputs

    load_plugins(job.get("plugins", []))
    data = load(Path(job["data"]))
    name, budget, seed = job["strategy"], job["budget"], job["seed"]
    strategy = ACQUISITIONS.create(name, **job.get("options", {}))
    needs = strategy.requires
    cuda = job["device"] == "cuda"
    if cuda:
        torch.zeros(1, device="cuda")  # the CUDA context belongs to the baseline, not to the strategy
    features, text = data["features"], data["text"]
    predictor = LinearPredictor(text, np.zeros(len(text), np.float32), TEMPERATURE)
    if needs & {POOL_FEATURES, EMBEDDINGS, PREDICTOR}:
        page_in(features)
    if PROBS in needs:
        page_in(data["probs"])
    labelled, targets, unlabelled = _pool_state(data, job.get("labelled_count"))
    ctx = SelectionContext(
        round=job.get("round", 1), num_classes=len(text), unlabelled=unlabelled, labelled=labelled,
        labelled_targets=targets,
        pool_features=features if POOL_FEATURES in needs else None,
        probs=data["probs"] if PROBS in needs else None,
        text_features=text if TEXT_FEATURES in needs else None,
        class_embeddings=predictor.class_embeddings() if CLASS_EMBEDDINGS in needs else None,
        embeddings=predictor.embed(features) if EMBEDDINGS in needs else None,
        predictor=predictor if PREDICTOR in needs else None,
    )
    t0 = time.perf_counter()
    check_selection_inputs(name, ctx, budget)  # the loop's check, timed apart; its blocks stay out of the peak
    check_s = time.perf_counter() - t0
    baseline = rss_mb()
    reset = reset_peak_rss()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    seconds, selection = [], None
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        sel = strategy.select(ctx, budget, np.random.default_rng(seed))
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        selection = sel if selection is None else selection
    peak = peak_rss_mb()
    idx = np.asarray(selection.indices, dtype=np.int64)
    problems = []
    if len(np.unique(idx)) != len(idx):
        problems.append("duplicate indices")
    if np.isin(idx, labelled).any():
        problems.append("selected labelled rows")
    free = np.asarray(list(selection.pseudo_labels), dtype=np.int64)
    if len(idx) + len(free) != budget:  # selective querying labels some candidates for free instead
        problems.append(f"selected {len(idx)} rows and {len(free)} free labels, budget {budget}")
    np.save(job["indices"], idx)
    out = {"status": "ok", "seconds": statistics.median(seconds), "seconds_all": seconds, "check_seconds": check_s,
           "baseline_rss_mb": baseline, "peak_rss_mb": peak if reset else max(peak, baseline),
           "working_mb": max(0.0, peak - baseline), "peak_reset": reset, "requires": sorted(needs),
           "selected": len(idx), "pseudo_labels": len(selection.pseudo_labels), "problems": problems,
           "options": _scalar_options(strategy)}
    if cuda:
        out["gpu_peak_mb"] = (torch.cuda.max_memory_allocated() - gpu_base) / 2 ** 20
    return out


def _reference_classifier(text: np.ndarray, lookup_probs: np.ndarray, lookup_rows: np.ndarray):
    """A scikit-activeml classifier answering with the fixed zero-shot probabilities.

    For the candidate matrix it was built for (the unlabelled rows, recognised by
    shape and its first and last rows) it returns the cached probabilities, as our
    strategies receive them; for any other input (DropQuery's dropout copies) it
    is the same linear zero-shot predictor ``softmax(x T^T / 0.01)``.
    """
    from skactiveml.base import SkactivemlClassifier
    from skactiveml.utils import MISSING_LABEL

    from methods.adaptation.zeroshot import LinearPredictor

    class FixedProbaClassifier(SkactivemlClassifier):
        def __init__(self, classes=None, missing_label=MISSING_LABEL, cost_matrix=None, random_state=None):
            super().__init__(classes=classes, missing_label=missing_label, cost_matrix=cost_matrix,
                             random_state=random_state)
            self.classes_ = np.arange(len(text))
            self._predictor = LinearPredictor(text, np.zeros(len(text), np.float32), TEMPERATURE)

        def fit(self, X, y, sample_weight=None):  # never called: the strategies get fit_clf=False
            return self

        def predict_proba(self, X, **kwargs):
            if X.shape[0] == len(lookup_probs) and np.array_equal(X[[0, -1]], lookup_rows):
                return lookup_probs
            return self._predictor.predict_proba(np.asarray(X, dtype=np.float32))

        def predict(self, X, **kwargs):
            return self.predict_proba(X).argmax(1)

    return FixedProbaClassifier(classes=np.arange(len(text)))


def _first(options: dict, keys: tuple[str, ...], kind: type, ok=lambda v: True):
    for key in keys:
        value = options.get(key)
        if isinstance(value, kind) and not isinstance(value, bool) and ok(value):
            return value
    return None


def reference_options(name: str, ours: dict, classes: int, shared_delta: bool = False) -> dict:
    """Constructor options of the scikit-activeml counterpart, matched to our strategy's settings."""
    cls, opts = REFERENCES[name]
    opts = dict(opts)
    o = ours.get("options", {})
    if name == "typiclust":
        k = _first(o, ("k_nn", "k", "n_neighbors", "knn"), int, lambda v: v >= 1)
        if k:
            opts["k"] = k
    if name == "probcover":
        opts["n_classes"] = classes
        # By default the reference estimates delta itself (its purity rule on its default grid), as ours
        # does inside select; --probcover-shared-delta hands it our delta so both build the same graph.
        delta = _first(o, ("delta",), float, lambda v: v > 0)  # a delta fixed by option is always shared
        if shared_delta and not delta:
            delta = _first(o, ("last_delta", "delta_"), float, lambda v: v > 0)
        if delta:
            opts["deltas"] = [delta]
        alpha = _first(o, ("alpha",), float, lambda v: 0 < v < 1)
        if alpha:
            opts["alpha"] = alpha
    if name == "dropquery":
        rate = _first(o, ("dropout_rate", "dropout", "p"), float, lambda v: 0 < v < 1)
        if rate:
            opts["dropout_rate"] = rate
        masks = _first(o, ("n_dropout_samples", "masks", "n_samples", "samples"), int, lambda v: v >= 3)
        if masks:
            opts["n_dropout_samples"] = masks
    return {"class": cls, "options": opts}


def worker_skactiveml(job: dict) -> dict:
    """scikit-activeml's counterpart on the same arrays: X = the pool features, y = NaN except the labelled rows."""
    from skactiveml import pool

    data = load(Path(job["data"]))
    name, budget, seed = job["strategy"], job["budget"], job["seed"]
    spec = job["reference"]
    features = data["features"]
    page_in(features)
    labelled, targets, unlabelled = _pool_state(data, job.get("labelled_count"))
    y = np.full(len(features), np.nan)
    y[labelled] = targets
    query = {"batch_size": budget}
    if spec["class"] in ("UncertaintySampling", "Badge", "DropQuery"):
        lookup_probs = np.ascontiguousarray(data["probs"][unlabelled])
        lookup_rows = np.asarray(features[unlabelled[[0, -1]]])
        query.update(clf=_reference_classifier(data["text"], lookup_probs, lookup_rows), fit_clf=False)
    baseline = rss_mb()
    reset = reset_peak_rss()
    seconds, picked = [], None
    for _ in range(job["repeats"]):
        strategy = getattr(pool, spec["class"])(random_state=seed, **spec["options"])
        t0 = time.perf_counter()
        got = strategy.query(features, y, **query)
        seconds.append(time.perf_counter() - t0)
        picked = got if picked is None else picked
    peak = peak_rss_mb()
    np.save(job["indices"], np.asarray(picked, dtype=np.int64))
    out = {"status": "ok", "seconds": statistics.median(seconds), "seconds_all": seconds,
           "baseline_rss_mb": baseline, "peak_rss_mb": peak if reset else max(peak, baseline),
           "working_mb": max(0.0, peak - baseline), "peak_reset": reset, "class": spec["class"],
           "options": spec["options"]}
    if name == "probcover" and hasattr(strategy, "delta_max_"):
        out["delta"] = float(strategy.delta_max_)
    return out


def worker_main(job: dict) -> None:
    out = (worker_ours if job["side"] == "ours" else worker_skactiveml)(job)
    Path(job["out"]).write_text(json.dumps(out))


def run_child(job: dict, workdir: Path, timeout: float | None, device: str) -> tuple[dict, np.ndarray | None]:
    """Run one worker in a fresh interpreter; its result, and the pool rows it selected."""
    tag = f"{job['side']}-{job['strategy']}"
    job = {**job, "out": str(workdir / f"{tag}.json"), "indices": str(workdir / f"{tag}.npy")}
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # kernels pick CUDA when they see one
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(job)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "seconds_lower_bound": time.perf_counter() - t0}, None
    if proc.returncode != 0 or not Path(job["out"]).exists():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-6:]
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
        return {"status": "error", "error": f"{why}: " + " | ".join(tail)}, None
    return json.loads(Path(job["out"]).read_text()), np.load(job["indices"])


# ----------------------------------------------------------------- quality


def nearest_distance(features: np.ndarray, centres: np.ndarray, device: str) -> np.ndarray:
    """Euclidean distance of every pool row to its nearest row of ``centres`` (row ids), in blocks."""
    import torch

    c = torch.as_tensor(np.asarray(features[np.sort(centres)], dtype=np.float32), device=device)
    cn = (c * c).sum(1)
    out = np.empty(len(features), np.float32)
    for s in range(0, len(features), BLOCK):
        x = torch.from_numpy(np.array(features[s: s + BLOCK], dtype=np.float32)).to(device)
        d = ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + cn[None, :]).min(1).values
        out[s: s + BLOCK] = d.clamp_min(0).sqrt().cpu().numpy()
    return out


def mean_typicality(features: np.ndarray, rows: np.ndarray, k: int, device: str) -> float:
    """Mean over ``rows`` of TypiClust's typicality, 1 / (mean distance to the k nearest pool points)."""
    import torch

    q = torch.as_tensor(np.asarray(features[np.sort(rows)], dtype=np.float32), device=device)
    qn = (q * q).sum(1, keepdim=True)
    best = torch.full((len(q), 0), float("inf"), device=device)
    for s in range(0, len(features), BLOCK):
        x = torch.from_numpy(np.array(features[s: s + BLOCK], dtype=np.float32)).to(device)
        d = (qn - 2 * q @ x.T + (x * x).sum(1)[None, :]).clamp_min(0)
        best = torch.cat([best, d], 1).topk(min(k + 1, best.shape[1] + d.shape[1]), dim=1, largest=False).values
    knn = best[:, 1:].sqrt().mean(1)  # the nearest one is the row itself
    return float((1.0 / (knn + 1e-7)).mean())


def quality(name: str, features: np.ndarray, labelled: np.ndarray, picked: np.ndarray, device: str,
            delta: float | None, k: int) -> dict:
    """Coverage figures of ``labelled`` plus ``picked`` (computed outside any timed section)."""
    out: dict = {}
    if name in COVERAGE_STRATEGIES or name == "probcover":
        dist = nearest_distance(features, np.union1d(labelled, picked), device)
        out["kcenter_radius"] = float(dist.max())
        if name == "probcover" and delta:
            out["coverage"] = float((dist <= delta).mean())
            out["coverage_delta"] = delta
            # What the labelled set covers alone: at 1.0 there is nothing left to cover and ProbCover
            # (both implementations) falls back to random picks.
            alone = (nearest_distance(features, labelled, device) <= delta).mean() if len(labelled) else 0.0
            out["coverage_labelled"] = float(alone)
    if name == "typiclust":
        out["mean_typicality"] = mean_typicality(features, picked, k, device)
        out["typicality_k"] = k
    return out


def quality_text(q: dict | None) -> str:
    if not q:
        return "-"
    parts = []
    if "kcenter_radius" in q:
        parts.append(f"r {q['kcenter_radius']:.3f}")
    if "mean_typicality" in q:
        parts.append(f"typ {q['mean_typicality']:.3f}")
    if "coverage" in q:
        parts.append(f"cov {q['coverage_labelled']:.3f}->{q['coverage']:.3f} @{q['coverage_delta']:.3g}")
    return ", ".join(parts) or "-"


# ------------------------------------------------------ reference memory guard


def reference_memory_gb(name: str, n: int, dim: int, classes: int, budget: int, labelled: int) -> float:
    """Rough peak of the scikit-activeml counterpart beyond its inputs (from reading its code)."""
    u = n - labelled
    if name == "badge":  # float64 gradient embedding U x C x D, and g_x ** 2 of the same size on the first pick
        b = 2 * u * classes * dim * 8 + (1 << 30)
    elif name == "probcover":  # N x N float32 distances + three N x N bool matrices + a boolean row copy per pick
        b = n * n * (4 + 3)
    elif name == "dropquery":  # candidate copy, int64 choice indices and bool mask per dropout pass
        b = u * dim * (4 + 8 + 1 + 4)
    elif name == "typiclust":
        b = n * (labelled + budget) * 8 + n * dim * 8
    elif name == "coreset":
        b = budget * n * 8 + n * dim * 8
    else:
        b = 4 * u * classes * 8
    return b / 1024 ** 3


# ----------------------------------------------------------------- targets


def check_targets(args, results: dict) -> dict:
    """PASS/FAIL against the issue's targets, for those defined at this pool size."""
    checks = []
    if args.n == SPEEDUP_TARGET["n"]:
        for name in SPEEDUP_TARGET["strategies"]:
            r = results.get(name)
            row = {"target": f"{name} >= {SPEEDUP_TARGET['min']:g}x faster than scikit-activeml at n={args.n}"}
            if r is None or r["ours"].get("status") != "ok":
                row.update(result="FAIL" if r else "N/A", detail="not run" if r is None else r["ours"].get("status"))
            elif "skactiveml" not in r:
                row.update(result="N/A", detail="run with --compare-skactiveml")
            else:
                ref = r["skactiveml"]
                if ref.get("status") == "ok":
                    ratio = ref["seconds"] / max(r["ours"]["seconds"], 1e-9)
                    row.update(result="PASS" if ratio >= SPEEDUP_TARGET["min"] else "FAIL", detail=f"{ratio:.1f}x")
                elif ref.get("status") == "timed out":
                    ratio = ref["seconds_lower_bound"] / max(r["ours"]["seconds"], 1e-9)
                    row.update(result="PASS" if ratio >= SPEEDUP_TARGET["min"] else "N/A",
                               detail=f">= {ratio:.1f}x (reference timed out)")
                else:
                    row.update(result="N/A", detail=f"reference {ref.get('status')}: {ref.get('reason', '')}")
            checks.append(row)
    limits = RESOURCE_TARGETS.get(args.n)
    if limits:
        for name, r in results.items():
            row = {"target": f"{name} <= {limits['seconds']:g} s and <= {limits['peak_gb']:g} GB peak at n={args.n}"}
            ours = r["ours"]
            if ours.get("status") != "ok":
                row.update(result="FAIL", detail=ours.get("status"))
            else:
                peak_gb = max(ours["peak_rss_mb"], ours.get("gpu_peak_mb", 0.0)) / 1024
                ok = ours["seconds"] <= limits["seconds"] and peak_gb <= limits["peak_gb"]
                row.update(result="PASS" if ok else "FAIL", detail=f"{ours['seconds']:.1f} s, {peak_gb:.2f} GB")
            checks.append(row)
    if not checks:
        return {"note": f"no target is defined at n={args.n}; targets: speed-up at n={SPEEDUP_TARGET['n']}, "
                        f"time and memory at n={sorted(RESOURCE_TARGETS)}", "checks": [], "all_pass": None}
    results_ = {c["result"] for c in checks}
    # False on any FAIL; None (undecided) while some target could not be checked; True when all pass.
    return {"checks": checks, "all_pass": False if "FAIL" in results_ else (None if "N/A" in results_ else True)}


# -------------------------------------------------------------------- main


def machine_info(device: str) -> dict:
    import sklearn
    import torch

    info = {"cpu_count": os.cpu_count(), "torch_device": device, "torch": torch.__version__, "numpy": np.__version__,
            "sklearn": sklearn.__version__, "platform": platform.platform(), "python": platform.python_version(),
            "mem_total_gb": round(mem_total_gb(), 1), "mem_available_gb": round(mem_available_gb(), 1),
            "torch_threads": torch.get_num_threads()}
    try:
        import skactiveml

        info["skactiveml"] = skactiveml.__version__
    except ImportError:
        info["skactiveml"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pool_arguments(ap, n=20000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--round", type=int, default=1,
                    help="the round the strategies are told it is (CB's K = B * round)")
    ap.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES), help="comma-separated registry names")
    ap.add_argument("--plugins", default="",
                    help="comma-separated plug-in modules (dotted names or .py paths) to import first, as a sweep's "
                         "`plugins:` does")
    ap.add_argument("--options", default="{}",
                    help='JSON object of per-strategy options, as a sweep config gives them, e.g. '
                         '\'{"pcb": {"max_candidates": 10000}}\' (default: each strategy\'s defaults)')
    ap.add_argument("--compare-skactiveml", action="store_true")
    ap.add_argument("--skactiveml-timeout", type=float, default=900.0, help="seconds per reference run")
    ap.add_argument("--skactiveml-max-gb", type=float, default=None,
                    help="skip a reference whose estimated working memory exceeds this "
                         "(default: 80%% of MemAvailable at start)")
    ap.add_argument("--probcover-shared-delta", action="store_true",
                    help="give scikit-activeml's ProbCover our delta instead of letting it run its purity search")
    ap.add_argument("--probcover-labelled", type=int, default=0,
                    help="labelled rows probcover starts from on both sides: the first K of the pool's --labelled "
                         "(default 0, its cold start; with the pool's 1,000 the delta balls already cover every "
                         "point, so both sides would only draw random fill-ins)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per strategy of ours")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present")
    ap.add_argument("--repeats", type=int, default=1, help="select calls per strategy; the median is reported")
    ap.add_argument("--noise", type=float, default=1.0, help="image noise norm around the class centre")
    ap.add_argument("--text-noise", type=float, default=5.0, help="noise norm of text features around the centres")
    ap.add_argument("--no-quality", action="store_true", help="skip radius / typicality / coverage figures")
    ap.add_argument("--targets", action="store_true", help="print PASS/FAIL against the issue's targets")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker_main(json.loads(args._worker))
        return {}

    import torch
    from rich.console import Console
    from rich.table import Table

    from methods.registry import ACQUISITIONS, load_plugins

    plugins = [p.strip() for p in args.plugins.split(",") if p.strip()]
    load_plugins(plugins)
    console = Console(width=None if sys.stdout.isatty() else 200)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    registered = set(ACQUISITIONS.names())
    wanted = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--options is not valid JSON ({err}); give an object such as "
                         f"'{{\"pcb\": {{\"max_candidates\": 10000}}}}'") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise SystemExit("--options must be a JSON object mapping strategy names to objects of options")
    unknown = sorted(set(options) - set(wanted))
    if unknown:
        raise SystemExit(f"--options names strategies not in --strategies: {', '.join(unknown)}")
    for name, opts in options.items():
        try:
            ACQUISITIONS.create(name, **opts)
        except (KeyError, TypeError, ValueError) as err:
            raise SystemExit(f"--options for {name}: {err}") from None
    skipped = {name: "not registered" for name in wanted if name not in registered}
    names = [name for name in wanted if name in registered]
    for name in skipped:
        console.print(f"skip {name}: not registered (known: {', '.join(sorted(registered))})", style="yellow",
                      markup=False)
    machine = machine_info(device)
    max_ref_gb = args.skactiveml_max_gb if args.skactiveml_max_gb is not None else 0.8 * mem_available_gb()

    t0 = time.perf_counter()
    data_path, cached = generate(args, Path(args.data_dir))
    data = load(data_path)
    gen_s = time.perf_counter() - t0
    meta = data["meta"]
    console.print(f"pool {args.n} x {args.dim}, {args.classes} classes, {args.labelled} labelled, budget "
                  f"{args.budget}; zero-shot accuracy {meta['zeroshot_accuracy']:.3f}, mean max prob "
                  f"{meta['mean_max_prob']:.3f}; {'loaded' if cached else 'generated'} in {gen_s:.1f} s "
                  f"({data_path}); device {device}, {os.cpu_count()} CPUs")

    labelled = np.asarray(data["labelled"], dtype=np.int64)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="acq-scale-") as tmp:
        workdir = Path(tmp)
        for name in names:
            start = min(args.probcover_labelled, len(labelled)) if name == "probcover" else len(labelled)
            base_job = {"strategy": name, "options": options.get(name, {}), "data": str(data_path),
                        "budget": args.budget, "seed": args.seed, "round": args.round,
                        "repeats": args.repeats, "device": device, "plugins": plugins, "labelled_count": start}
            ours, picked = run_child({**base_job, "side": "ours"}, workdir, args.timeout, device)
            entry = {"ours": ours}
            opts = ours.get("options", {})
            delta = _first(opts, ("last_delta", "delta_", "delta"), float, lambda v: v > 0)
            k = _first(opts, ("k_nn", "k", "n_neighbors", "knn"), int, lambda v: v >= 1) or TYPICALITY_K
            if picked is not None and not args.no_quality:
                entry["quality"] = quality(name, data["features"], labelled[:start], picked, device, delta, k)
            line = (f"{name}: ours {ours['status']}" + (f", {ours['seconds']:.2f} s, peak {ours['peak_rss_mb']:.0f} "
                    f"MB" if ours["status"] == "ok" else f" ({ours.get('error', '')})"))
            if args.compare_skactiveml:
                if name not in REFERENCES:
                    entry["skactiveml"] = {"status": "no counterpart", "reason": NO_REFERENCE.get(
                        name, "no counterpart in scikit-activeml 1.0.1")}
                else:
                    spec = reference_options(name, ours, args.classes, args.probcover_shared_delta)
                    need = reference_memory_gb(name, args.n, args.dim, args.classes, args.budget, start)
                    if need > max_ref_gb:
                        ref, ref_picked = {"status": "skipped", "reason": f"needs ~{need:.1f} GB, limit "
                                           f"{max_ref_gb:.1f} GB (--skactiveml-max-gb)"}, None
                    else:
                        ref, ref_picked = run_child({**base_job, "side": "skactiveml", "reference": spec}, workdir,
                                                    args.skactiveml_timeout, device)
                    ref["estimated_gb"] = round(need, 2)
                    ref["note"] = REFERENCE_NOTES.get(name, "")
                    ref.setdefault("class", spec["class"])
                    ref.setdefault("options", spec["options"])
                    if ref_picked is not None:
                        if name == "probcover" and "delta" in ref:
                            ref["ours_delta"] = delta
                        if picked is not None:
                            a, b = set(picked.tolist()), set(ref_picked.tolist())
                            ref["jaccard"] = len(a & b) / max(1, len(a | b))
                            ref["same_order"] = picked.tolist() == ref_picked.tolist()
                        if ours["status"] == "ok":
                            ref["speedup"] = ref["seconds"] / max(ours["seconds"], 1e-9)
                        if not args.no_quality:
                            # the same yardstick for both sides: coverage at our delta
                            ref["quality"] = quality(name, data["features"], labelled[:start], ref_picked, device,
                                                     delta or ref.get("delta"), k)
                    elif ref["status"] == "timed out" and ours["status"] == "ok":
                        ref["speedup_lower_bound"] = ref["seconds_lower_bound"] / max(ours["seconds"], 1e-9)
                    entry["skactiveml"] = ref
                    line += f"; skactiveml {ref['status']}" + (f", {ref['seconds']:.2f} s" if "seconds" in ref else "")
            console.print(line, markup=False)
            results[name] = entry

    cuda = device == "cuda"
    title = (f"acquisition at scale: n={args.n}, d={args.dim}, C={args.classes}, L={args.labelled}, "
             f"budget {args.budget}, {device}, {os.cpu_count()} CPUs")
    table = Table(title=title)
    for col in ["strategy", "ours s", "peak MB", "working MB"] + (["GPU MB"] if cuda else []) + ["quality"]:
        table.add_column(col, justify="left" if col in ("strategy", "quality") else "right")
    if args.compare_skactiveml:
        for col in ("skactiveml s", "peak MB ", "working MB ", "speed-up", "agreement", "skactiveml quality"):
            table.add_column(col, justify="left" if "quality" in col else "right")
    for name, r in results.items():
        o = r["ours"]
        ok = o["status"] == "ok"
        row = [name, _fmt(o.get("seconds"), ".2f", o["status"]), _fmt(o.get("peak_rss_mb"), ".0f"),
               _fmt(o.get("working_mb"), ".0f")]
        if cuda:
            row.append(_fmt(o.get("gpu_peak_mb"), ".0f"))
        row.append(quality_text(r.get("quality")) if ok else "-")
        if args.compare_skactiveml:
            ref = r.get("skactiveml", {})
            if ref.get("status") == "ok":
                row += [f"{ref['seconds']:.2f}", f"{ref['peak_rss_mb']:.0f}", f"{ref['working_mb']:.0f}",
                        _fmt(ref.get("speedup"), ".1f") + ("x" if "speedup" in ref else ""),
                        _fmt(ref.get("jaccard"), ".3f"), quality_text(ref.get("quality"))]
            elif ref.get("status") == "timed out":
                lb = ref.get("speedup_lower_bound")
                row += [f"timed out (>{ref['seconds_lower_bound']:.0f})", "-", "-",
                        f">={lb:.1f}x" if lb else "-", "-", "-"]
            else:
                row += [ref.get("status", "-"), "-", "-", "-", "-", "-"]
        table.add_row(*row)
    console.print(table)
    for name, r in results.items():
        ref = r.get("skactiveml", {})
        if ref.get("status") == "ok" and ref.get("note"):
            extra = (f" (delta: ours {ref['ours_delta']:.4g}, skactiveml {ref['delta']:.4g})"
                     if ref.get("ours_delta") and ref.get("delta") else "")
            console.print(f"  {name} vs skactiveml.{ref['class']}: {ref['note']}{extra}", markup=False)
        if ref.get("status") not in (None, "ok"):
            console.print(f"  {name} / skactiveml: {ref.get('status')}: "
                          f"{ref.get('reason') or ref.get('error') or ''}".rstrip(": "), markup=False)
        if r.get("quality", {}).get("coverage_labelled", 0.0) >= 1.0:
            console.print(f"  {name}: the labelled set alone covers the whole pool at delta "
                          f"{r['quality']['coverage_delta']:.4g}, so the picks are random fill-ins (on both sides): "
                          "its agreement says nothing and its time is the graph and delta search", markup=False)
        if r["ours"].get("status") != "ok":
            console.print(f"  {name}: {r['ours'].get('error', r['ours']['status'])}", markup=False)
        elif r["ours"].get("problems"):
            console.print(f"  [red]{name}: invalid selection: {', '.join(r['ours']['problems'])}[/]")

    targets = None
    if args.targets:
        targets = check_targets(args, results)
        if targets.get("note"):
            console.print(targets["note"])
        for c in targets["checks"]:
            colour = {"PASS": "green", "FAIL": "red"}.get(c["result"], "yellow")
            console.print(f"[{colour}]{c['result']}[/] {c['target']}: {c['detail']}")
        if targets["checks"]:
            verdict = {True: "all PASS", False: "some FAIL", None: "incomplete (some N/A)"}[targets["all_pass"]]
            console.print(f"targets at n={args.n}: {verdict}")

    figures = {
        "benchmark": "acquisition_scale",
        "params": {"options": options, "n": args.n, "dim": args.dim, "classes": args.classes, "budget": args.budget,
                   "labelled": args.labelled, "seed": args.seed, "repeats": args.repeats, "device": device,
                   "noise": args.noise, "text_noise": args.text_noise, "temperature": TEMPERATURE,
                   "strategies": names, "plugins": plugins, "compare_skactiveml": args.compare_skactiveml,
                   "skactiveml_timeout": args.skactiveml_timeout,
                   "probcover_shared_delta": args.probcover_shared_delta,
                   "probcover_labelled": args.probcover_labelled, "skactiveml_max_gb": round(max_ref_gb, 1)},
        "machine": machine,
        "data": {"path": str(data_path), "cached": cached, "seconds": round(gen_s, 2),
                 "zeroshot_accuracy": meta["zeroshot_accuracy"], "mean_max_prob": meta["mean_max_prob"]},
        "skipped": skipped,
        "strategies": results,
        "targets": targets,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
