"""Embed a dataset's splits with a frozen encoder and cache them (Ray Data).

    python experiments/embed.py --dataset synth-shapes --encoder tiny-clip --zeroshot
    python experiments/embed.py --dataset eurosat --encoder ViT-B-16:openai --data-root /data --cache /mnt/cache
    python experiments/embed.py --list
    python experiments/embed.py --card path/to/my.yaml --dataset my-dataset --data-root /data

The second run of the same command reuses the cache. The last line printed is
one JSON object (dataset, encoder, split sizes, dimension, reuse, seconds and,
with --zeroshot, accuracies), so scripts can read it with ``tail -n1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_source_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--source-option expects KEY=VALUE (VALUE as JSON), got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="registered dataset name (see --list)")
    ap.add_argument("--card", action="append", default=[], metavar="PATH",
                    help="a dataset card YAML file outside the package (repeatable); loaded before --dataset")
    ap.add_argument("--encoder", default="tiny-clip", help="tiny-clip | MODEL:TAG | MODEL:/path | local-dir:/path")
    ap.add_argument("--split", action="append", help="split(s) to embed (default: all of the card's splits)")
    ap.add_argument("--cache", type=Path, default=None, help="cache root (default: $ALVLM_CACHE_DIR or ./cache)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored feature dtype")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--actors", type=int, default=None, help="encoder actors (default: one per GPU, else 1)")
    ap.add_argument("--on-corrupt", default="fail", choices=["fail", "skip"])
    ap.add_argument("--data-root", default=None, help="root folder of on-disk datasets")
    ap.add_argument("--source-option", action="append", default=[], metavar="KEY=JSON",
                    help='override a card source option, e.g. sizes=\'{"train": 500}\'')
    ap.add_argument("--protocol", default="default", help="prompt-template protocol of the card")
    ap.add_argument("--zeroshot", action="store_true", help="print zero-shot accuracy on the test split")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    ap.add_argument("--list", action="store_true", help="print registered datasets and encoders as JSON")
    return ap


def _load_user_cards(paths: list[str]) -> None:
    """Register ``--card`` files first, so --list and --dataset see them; a bad file stops with its reason."""
    from datasets.registry import load_card_files

    try:
        load_card_files(paths)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from datasets.registry import get_card, list_datasets
    from methods.core.encoders import known_encoders, parse_encoder

    _load_user_cards(args.card)
    if args.list:
        listing = {"datasets": list_datasets(), "encoders": known_encoders()}
        print(json.dumps(listing))
        return listing
    if not args.dataset:
        raise SystemExit("--dataset is required (see --list for the registered names)")

    from rich.console import Console

    from orchestrator.encoder_pool import encoder_session
    from orchestrator.features import DEFAULT_CACHE, EmbedOptions, embed_class_texts, embed_splits
    from orchestrator.zeroshot import accuracy_report, class_embeddings, zero_shot_probs

    console = Console(stderr=True)
    try:
        card = get_card(args.dataset)
        spec = parse_encoder(args.encoder, args.precision)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc.args[0] if exc.args else exc}") from None
    cache = args.cache or DEFAULT_CACHE
    options = EmbedOptions(batch_size=args.batch_size, num_actors=args.actors, on_corrupt=args.on_corrupt,
                           dtype=args.dtype)
    source_options = parse_source_options(args.source_option)
    t0 = time.time()
    summary = {"dataset": card.name, "encoder": spec.name, "cache": str(cache), "splits": {}, "dim": None}
    splits = args.split or list(card.splits)
    with encoder_session(), console.status(f"embedding {card.name} {splits} with {spec.name}"):
        results = {split: cached for (_, split), cached in embed_splits(
            [(card.name, s) for s in splits], spec, cache, options, args.data_root, source_options,
            args.address).items()}
        text = embed_class_texts(card.name, spec, cache, args.protocol, args.address)  # same encoder actors
    for split, cached in results.items():
        summary["splits"][split] = {"count": len(cached), "reused": cached.reused,
                                    "skipped": len(cached.manifest["skipped"])}
        summary["dim"] = cached.manifest["dim"]
        console.print(f"{card.name}/{split}: {len(cached)} embeddings "
                      f"({'reused' if cached.reused else 'computed'}) in {cached.directory}")
    summary["reused"] = all(s["reused"] for s in summary["splits"].values()) and text["reused"]
    if args.zeroshot:
        split = "test" if "test" in results else next(iter(results))
        cached = results[split]
        probs = zero_shot_probs(cached.features, class_embeddings(text["embeddings"]))
        report = accuracy_report(probs, cached.labels, card.classes)
        summary["zeroshot"] = {"split": split, **report}
        _print_zero_shot(console, card.name, report)
    summary["seconds"] = round(time.time() - t0, 2)
    print(json.dumps(summary))
    return summary


def _print_zero_shot(console, name: str, report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"zero-shot on {name}: top-1 {100 * report['top1']:.1f}%"
                  + (f", AUC {report['auc']:.3f}" if "auc" in report else ""))
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for cls, acc in report["per_class"].items():
        table.add_row(cls, f"{100 * acc:.1f}%")
    console.print(table)


if __name__ == "__main__":
    main()
