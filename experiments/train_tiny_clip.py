"""Train the shipped tiny CLIP on the synthetic caption corpus.

The checkpoint this writes (``methods/core/weights/tiny-clip.pt``) is the
project's offline default encoder. It is an ordinary open_clip state dict for
the ``tiny-clip`` model config, so it loads through the exact code path of
every real checkpoint (``open_clip.create_model_and_transforms(name,
pretrained=path)``).

Deterministic for a given seed and thread count: the corpus is rendered from
a stream no benchmark split uses, the batch order comes from the seed, and
torch runs with a fixed number of threads.

    python experiments/train_tiny_clip.py            # about 15-25 minutes on 2 cores
    python experiments/train_tiny_clip.py --steps 50 --out /tmp/tiny.pt   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.synthetic.family import FAMILY, CorpusMix, corpus_sample  # noqa: E402
from datasets.synthetic.templates import TEMPLATES  # noqa: E402
from methods.core.encoders import TINY_CLIP_CHECKPOINT, TINY_CLIP_MODEL, register_model_configs  # noqa: E402


def _render_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    start, stop, seed = args
    pairs = [corpus_sample(i, seed) for i in range(start, stop)]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def build_corpus(size: int, seed: int, workers: int) -> tuple[np.ndarray, list[str]]:
    """Render the whole pre-training corpus (uint8 images and captions)."""
    chunk = 2000
    jobs = [(s, min(s + chunk, size), seed) for s in range(0, size, chunk)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_render_chunk, jobs)
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def to_model_input(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, the same arithmetic as open_clip's transform at native size."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


def zero_shot_report(model, tokenizer, mean, std, seed: int, n_test: int) -> dict:
    """Top-1 and per-class accuracy of template-ensemble zero-shot on each synthetic test split."""
    from sklearn.metrics import roc_auc_score

    report = {}
    model.eval()
    with torch.no_grad():
        for name, spec in FAMILY.items():
            if spec.multilabel:  # the report is single-label zero-shot accuracy; the findings member has none
                continue
            idx = np.arange(n_test)
            y = spec.labels("test", idx, seed=0)
            img = model.encode_image(to_model_input(spec.render("test", idx, seed=0), mean, std), normalize=True)
            text = []
            for cls in spec.classes:
                emb = model.encode_text(tokenizer([t.format(cls) for t in TEMPLATES[name]]), normalize=True)
                text.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
            probs = (100 * img @ torch.stack(text).T).softmax(-1).numpy()
            pred = probs.argmax(1)
            per_class = [float((pred[y == c] == c).mean()) for c in range(len(spec.classes))]
            entry = {"top1": float((pred == y).mean()), "per_class": per_class}
            if spec.positive_rate is not None:
                entry["auc"] = float(roc_auc_score(y, probs[:, 1]))
            report[name] = entry
    model.train()
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=TINY_CLIP_CHECKPOINT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus-size", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=2600)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-size", type=int, default=1000)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="skip training: evaluate the checkpoint at --out and rewrite its .json summary")
    args = ap.parse_args(argv)

    import open_clip
    from open_clip.loss import ClipLoss
    from rich.progress import Progress

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    register_model_configs()
    if args.evaluate_only:
        model = open_clip.create_model(TINY_CLIP_MODEL, pretrained=str(args.out))
        previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
        return _summarise(model, open_clip.get_tokenizer(TINY_CLIP_MODEL), args, previous.get("train_seconds"))
    t0 = time.time()
    images, captions = build_corpus(args.corpus_size, args.seed, workers=max(1, args.threads))
    print(f"corpus: {len(images)} pairs rendered in {time.time() - t0:.0f}s", flush=True)

    model = open_clip.create_model(TINY_CLIP_MODEL)
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_MODEL)
    unique, caption_ids = np.unique(np.asarray(captions), return_inverse=True)
    tokens = tokenizer(list(unique))
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    loss_fn = ClipLoss()
    order_rng = np.random.default_rng(args.seed)
    order = order_rng.permutation(len(images))
    pos = 0
    t_train = time.time()
    with Progress() as progress:
        task = progress.add_task("training tiny-clip", total=args.steps)
        for step in range(args.steps):
            if pos + args.batch_size > len(order):
                order, pos = order_rng.permutation(len(images)), 0
            batch = order[pos: pos + args.batch_size]
            pos += args.batch_size
            img_f, txt_f, scale = model(to_model_input(images[batch], mean, std), tokens[caption_ids[batch]])
            loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            progress.update(task, advance=1, description=f"training tiny-clip loss={loss.item():.3f}")
            if not progress.console.is_terminal and step % 200 == 0:
                print(f"step {step}/{args.steps} loss {loss.item():.3f} {time.time() - t_train:.0f}s", flush=True)
    train_seconds = time.time() - t_train
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    return _summarise(model, tokenizer, args, round(train_seconds, 1))


def _summarise(model, tokenizer, args, train_seconds) -> dict:
    """Zero-shot figures of the checkpoint on every synthetic test split, written beside it as JSON."""
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    report = zero_shot_report(model, tokenizer, mean, std, args.seed, args.eval_size)
    summary = {
        "checkpoint": str(args.out.resolve().relative_to(ROOT)) if args.out.resolve().is_relative_to(ROOT) else str(args.out),
        "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
        "corpus_size": args.corpus_size, "threads": args.threads, "train_seconds": train_seconds,
        "size_mb": round(args.out.stat().st_size / 2**20, 2), "corpus_mix": CorpusMix().__dict__,
        "zero_shot_top1": {k: round(v["top1"], 4) for k, v in report.items()},
        "zero_shot_per_class_spread": {k: round(max(v["per_class"]) - min(v["per_class"]), 4) for k, v in report.items()},
        "zero_shot_auc": {k: round(v["auc"], 4) for k, v in report.items() if "auc" in v},
    }
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
