"""Black-box methods' costs: VALIANT's VIPD and BAPS in seconds and queries per round, and the served endpoint's speed.

For pools of 5,000 and 50,000 synthetic scans (tiny CLIP as the VIPD's encoder
and as the black box) it times, side by side:

* the ``segmentation_codes`` preparation (k-means maps + autoencoder, once per dataset);
* the VIPD's SPSA-GC training (``steps`` steps of 32 images, 5 draws) -- VALIANT's only
  black-box spend, at the round-0 fit -- and the pool's prompt instability (no query);
* BAPS's round: its training steps on 100 labelled rows plus one query per unlabelled row.

Then it serves the black box with Ray Serve on 127.0.0.1 and measures queries/s
through HTTP next to the local handle's (same batches of 64 images). The last
line is JSON.

    python benchmarks/blackbox.py [--pools 5000,50000] [--steps 100] [--serve-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASET = "synth-lesions"


def _context(n: int):
    from datasets.registry import get_card
    from methods.adaptation.prompting.model import frozen_clip
    from methods.base import AdaptContext
    from methods.core.blackbox import ClipBlackBoxSpec
    from orchestrator.images import DatasetImages
    from orchestrator.zeroshot import class_embeddings

    card = get_card(DATASET)
    clip = frozen_clip("tiny-clip")
    images = DatasetImages(DATASET, {"pool": "train"}, {"pool": np.arange(n)}, "tiny-clip", {"sizes": {"train": n}})
    text = class_embeddings(np.stack([clip.encode_texts([t.format(c) for c in card.classes]).numpy()
                                      for t in card.prompts()]))
    spec = ClipBlackBoxSpec("tiny-clip", tuple(card.classes), tuple(card.prompts()))
    ctx = AdaptContext(card.num_classes, 0, text, device="cpu", class_names=list(card.classes), images=images,
                       blackbox=spec.open())
    return ctx, spec, images


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def pool_costs(n: int, steps: int) -> dict:
    from methods.base import TrainSet
    from methods.registry import ADAPTATIONS
    from methods.segmentation_codes import SegmentationCodes
    from orchestrator.preparation import card_inputs

    ctx, _, images = _context(n)
    seg, seg_s = _timed(lambda: SegmentationCodes().run(card_inputs(DATASET, "tiny-clip", images=images),
                                                        np.random.default_rng(0)))
    ctx.prepared = {"segmentation_codes": seg}
    empty = TrainSet(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64))
    vipd = ADAPTATIONS.create("vipd", steps=steps)
    _, vipd_s = _timed(lambda: vipd.fit(empty, ctx, np.random.default_rng(0)))
    vipd_queries = ctx.blackbox.queries
    labelled = np.arange(100)
    labels = np.asarray(images._source_and_transform("pool")[0].labels)[:100]
    ctx.unlabelled, before = np.arange(100, n), ctx.blackbox.queries
    train = TrainSet(np.zeros((100, 1), np.float32), labels, np.zeros(100, bool), labelled)
    _, baps_s = _timed(lambda: ADAPTATIONS.create("baps", steps=steps).fit(train, ctx, np.random.default_rng(0)))
    return {"pool": n, "segmentation_s": round(seg_s, 2), "vipd_fit_s": round(vipd_s, 2),
            "vipd_queries_once": int(vipd_queries), "baps_round_s": round(baps_s, 2),
            "baps_queries_per_round": int(ctx.blackbox.queries - before)}


def served_speed(seconds: float, port: int = 8765, batch: int = 64) -> dict:
    from methods.core.blackbox import ServedBlackBoxSpec
    from orchestrator.ray_runtime import ensure_ray
    from orchestrator.serving import serve_blackboxes, stop_blackboxes

    _, spec, images = _context(batch)
    pixels = images.pixels("pool", np.arange(batch))
    ensure_ray()
    url = serve_blackboxes({DATASET: spec}, port)
    out = {}
    try:
        for name, box in (("local", spec.open()), ("served", ServedBlackBoxSpec(url, DATASET, 2).open())):
            box.query(pixels)  # warm-up: model load on the replica, first connection
            box.queries, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                box.query(pixels)
            out[f"{name}_queries_per_s"] = round(box.queries / (time.perf_counter() - t0), 1)
    finally:
        stop_blackboxes([DATASET])
    out["served_over_local"] = round(out["served_queries_per_s"] / out["local_queries_per_s"], 3)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="5000,50000")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--serve-seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8765, help="where Ray Serve listens on 127.0.0.1")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = [pool_costs(int(n), args.steps) for n in args.pools.split(",")]
    print(f"{'pool':>7} {'segment s':>10} {'VIPD fit s':>11} {'VIPD queries':>13} {'BAPS round s':>13} "
          f"{'BAPS queries/round':>19}")
    for r in rows:
        print(f"{r['pool']:>7} {r['segmentation_s']:>10} {r['vipd_fit_s']:>11} {r['vipd_queries_once']:>13,} "
              f"{r['baps_round_s']:>13} {r['baps_queries_per_round']:>19,}")
    served = served_speed(args.serve_seconds, args.port)
    print(f"black box, batches of 64: local {served['local_queries_per_s']} queries/s, through Ray Serve "
          f"{served['served_queries_per_s']} queries/s ({served['served_over_local']}x)")
    result = {"pools": rows, "serving": served, "steps": args.steps}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
