"""A whole CoOp fit, eager and with the learners' ``compile`` option: what ``torch.compile`` buys a round.

``prompt_training.py --compile`` times one step; this times what a trial
pays. For C = 10, 100 and 1,000 classes, ``coop`` (the real learner, through
the registry) fits ``--rows`` random unit features with random labels for
``--epochs`` epochs of its default recipe (batch 32), twice in one process:
the first fit is round 1 of a trial (it compiles), the second is every later
round (the compiled code is reused: the class prompts keep their shapes).
Eager runs once per C; each ``--modes`` entry runs in a fresh process with an
empty inductor cache (**cold**: a trial on a new machine) and then again in
another process on that cache (**warm**: every later trial on the machine).
Reported per mode: the seconds of each fit; the speed-up of a later round
(eager's fastest fit over the faster second fit of the cold and warm runs:
the fits that compile nothing, the steadiest this noisy machine gives); how
far the compiled fit's classifier lies from eager's (largest absolute weight
difference, and the share of the training rows whose argmax agrees); and
whether the cold and the warm process learnt the same classifier bit for bit
(what a trial resumed on a warm cache relies on).

The tiny CLIP loads its shipped weights; any other open_clip model (for
example ``--model ViT-B-16`` on a GPU) gets random weights saved to a
temporary checkpoint, which is all a speed measurement needs. The last line
is JSON.

    python benchmarks/learner_compile.py [--classes 10,100,1000] [--modes default] [--epochs 10] [--rows 320]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prompt_training import _spawn, compile_modes  # noqa: E402  (this directory's sibling; it puts the repository on the path)

from methods.adaptation.prompting.text import COMPILE_MODES  # noqa: E402


def _encoder(model: str, folder: Path) -> str:
    """The encoder name a learner loads: the shipped tiny CLIP, or ``model`` with random weights saved to ``folder``
    (on the CPU; each worker loads them onto its device)."""
    if model == "tiny-clip":
        return model
    import open_clip
    import torch

    path = folder / f"{model}-random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model(model, device="cpu").state_dict(), path)
    return f"{model}:{path}"


def _fit_twice(config: dict) -> dict:
    """In this (fresh) process: two ``coop`` fits with the same seed; their seconds; the classifier to a file."""
    import torch

    from methods.adaptation.prompting.model import frozen_clip
    from methods.base import AdaptContext, TrainSet
    from methods.registry import ADAPTATIONS

    classes, rows, device, encoder = config["classes"], config["rows"], config["device"], config["encoder"]
    dim = int(frozen_clip(encoder, "fp32", device).encode_texts(["a photo"]).shape[1])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    train = TrainSet(x / np.linalg.norm(x, axis=1, keepdims=True), rng.integers(0, classes, rows), np.zeros(rows, bool))
    ctx = AdaptContext(classes, 1, np.zeros((classes, dim), np.float32), device=device, encoder=encoder,
                       class_names=[f"class {c}" for c in range(classes)])
    learner = ADAPTATIONS.create("coop", epochs=config["epochs"], compile=config["mode"],
                                 class_chunk=config["class_chunk"])
    seconds, predictor = [], None
    for _ in range(2):
        t0 = time.perf_counter()
        predictor = learner.fit(train, ctx, np.random.default_rng(1))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    np.save(config["weights"], predictor.weight)
    if config["mode"] is None:  # every process draws the same rows; _compare reads eager's
        np.save(config["weights"].replace(".npy", "-x.npy"), train.features)
    return {**config, "seconds": seconds}


def _compare(eager: dict, reference: dict, compiled: dict) -> dict:
    """How far a compiled fit's classifier lies from ``reference``'s (eager's, or a cold run's): max |dW|, argmax
    agreement on the training rows, which only the eager process saved."""
    if any("error" in r for r in (eager, reference, compiled)):
        return {}
    w_reference, w_compiled = np.load(reference["weights"]), np.load(compiled["weights"])
    x = np.load(eager["weights"].replace(".npy", "-x.npy"))
    return {"max_abs_weight_diff": float(np.abs(w_reference - w_compiled).max()),
            "argmax_agreement": float(((x @ w_reference.T).argmax(1) == (x @ w_compiled.T).argmax(1)).mean())}


def _steady_speedup(eager: dict, runs: dict) -> float | None:
    """Eager's fastest fit over the compiled runs' fastest later fit: the best of the fits that compile nothing,
    which is as steady as this noisy machine allows (eager's two fits, the cold and the warm run's second)."""
    if any("error" in r for r in (eager, *runs.values())):
        return None
    return min(eager["seconds"]) / min(r["seconds"][1] for r in runs.values())


def _progress(label: str, result: dict) -> dict:
    """One line per finished process, so a run cut short by a timeout still leaves its figures."""
    print(f"{label}: " + (result["error"] if "error" in result else
                          " / ".join(f"{s:.2f} s" for s in result["seconds"])), flush=True)
    return result


def _measure(args, classes: int, encoder: str, folder: Path) -> dict:
    """Eager once; each mode cold (a fresh inductor cache) and warm (the same cache, a new process)."""
    base = {"classes": classes, "rows": args.rows, "epochs": args.epochs, "device": args.device, "encoder": encoder,
            "class_chunk": args.class_chunk}
    eager_config = {**base, "mode": None, "weights": str(folder / f"eager-{classes}.npy")}
    eager = _progress(f"C={classes} eager", _spawn(eager_config, args.timeout, __file__))
    row = {"classes": classes, "eager": eager, "modes": {}}
    for mode in args.modes:
        cache = tempfile.mkdtemp(prefix="inductor-", dir=folder)
        runs = {}
        for start in ("cold", "warm"):
            config = {**base, "mode": mode, "weights": str(folder / f"{mode}-{start}-{classes}.npy")}
            runs[start] = _progress(f"C={classes} {mode} {start}", _spawn(
                config, args.timeout, __file__, env={"TORCHINDUCTOR_CACHE_DIR": cache}))
        warm = runs["warm"]
        row["modes"][mode] = {**runs, "speedup": _steady_speedup(eager, runs), **_compare(eager, eager, warm),
                              "cold_equals_warm": _compare(eager, runs["cold"], warm).get("max_abs_weight_diff") == 0.0}
    return row


def _table(rows: list[dict], args):
    from rich.table import Table

    table = Table(title=f"coop fit ({args.rows} rows x {args.epochs} epochs, batch 32) on {args.model}, {args.device}: "
                        "seconds of round 1 / a later round")
    for col in ("classes", "eager", *[f"{m} cold" for m in args.modes], *[f"{m} warm" for m in args.modes],
                *[f"{m} speed-up" for m in args.modes], *[f"{m} max |dW|, argmax agree" for m in args.modes]):
        table.add_column(col, justify="right")

    def fits(r: dict) -> str:
        return r["error"][:60] if "error" in r else " / ".join(f"{s:.2f}" for s in r["seconds"])

    for r in rows:
        modes = [r["modes"][m] for m in args.modes]
        table.add_row(str(r["classes"]), fits(r["eager"]), *[fits(m["cold"]) for m in modes],
                      *[fits(m["warm"]) for m in modes],
                      *[f"{m['speedup']:.2f}x" if m["speedup"] else "-" for m in modes],
                      *[f"{m['max_abs_weight_diff']:.1e}, {m['argmax_agreement']:.3f}" if "argmax_agreement" in m
                        else "-" for m in modes])
    return table


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-clip")
    ap.add_argument("--classes", default="10,100,1000")
    ap.add_argument("--modes", default="default",
                    help=f"comma-separated torch.compile modes: {', '.join(COMPILE_MODES)}")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=320, help="labelled rows per fit (10 steps per epoch at batch 32)")
    ap.add_argument("--class-chunk", type=int, default=256, help="class prompts per (checkpointed) chunk")
    ap.add_argument("--device", default=None)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        print(json.dumps(_fit_twice(json.loads(args._worker))))
        return {}
    import torch
    from rich.console import Console

    args.modes = compile_modes(ap, "--modes", args.modes)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="learner-compile-") as tmp:
        folder = Path(tmp)
        encoder = _encoder(args.model, folder)
        rows = [_measure(args, int(c), encoder, folder) for c in args.classes.split(",")]
    Console(width=200).print(_table(rows, args))
    summary = {"model": args.model, "device": args.device, "rows": args.rows, "epochs": args.epochs, "coop": rows}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
