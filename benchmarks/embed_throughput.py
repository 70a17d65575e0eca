"""Images per second of the Ray Data embedding pipeline next to a plain single-process PyTorch loop.

Both sides use the same model, batch size, inputs and decode function; the
plain loop loads the model, then decodes and encodes one batch after the other
in one process (torch using every core), the Ray pipeline overlaps CPU decode
tasks with encoder actors. Three Ray figures are printed:

* cold: one call that starts its own encoder actors (a new worker process
  imports torch and open_clip and loads the model), as a lone ``embed.py`` does;
* in a session: a call inside ``encoder_session()`` whose actors an earlier
  call (one batch) started, as a sweep's later datasets and its class texts
  are, and ``embed.py``'s class texts;
* steady state: the marginal rate between session runs of n/5 and n images,
  where every fixed cost cancels out.

Printed side by side, with ratios, in one run; the last line is JSON.

    python benchmarks/embed_throughput.py                   # tiny CLIP on CPU
    python benchmarks/embed_throughput.py --gpu-vit         # + ViT-B/16 fp16 GPU stage (random weights)
    python benchmarks/embed_throughput.py --gpu-vit-only --n 200000 --batch-size 512   # that stage alone, no Ray
    python benchmarks/embed_throughput.py --gpu-vit-only --compile default   # + the stage under torch.compile

The GPU stage prints PASS or FAIL against issue 15's 11,000 images/s (ViT-B/16 fp16 on an H100/H200), on
the best of eager and the compiled modes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def plain_loop(dataset: str, n: int, batch_size: int, encoder_name: str) -> float:
    """Seconds for model load, then decode -> transform -> encode of n images one batch after the other.

    It uses the pipeline's own decode function and encoder, so the two sides
    differ only in orchestration (and torch uses every core here).
    """
    import numpy as np
    import torch

    from datasets.registry import open_split
    from methods.core.encoders import load_encoder
    from orchestrator.features import _decode_batch
    from orchestrator.pixels import PixelTransform

    t0 = time.perf_counter()
    source = open_split(dataset, "train", sizes={"train": n})
    encoder = load_encoder(encoder_name)
    pixels_of = PixelTransform.of(encoder.spec)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batch = _decode_batch({"data": np.stack([np.zeros_like(idx), idx], axis=1)}, [source], pixels_of)
        encoder.encode_images(torch.from_numpy(batch["pixels"]))
    return time.perf_counter() - t0


def ray_pipeline(dataset: str, n: int, batch_size: int, encoder_name: str, actors: int | None) -> float:
    """Seconds for the whole embed call into an empty cache, actor start-up and parquet writing included."""
    from orchestrator.features import EmbedOptions, embed_split

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        embed_split(dataset, "train", encoder_name, cache, EmbedOptions(batch_size=batch_size, num_actors=actors),
                    source_options={"sizes": {"train": n}})
        return time.perf_counter() - t0


#: Issue 15, target 5: the ViT-B/16 fp16 image tower alone on an H100/H200 (about 25 % of its compute bound).
VIT_TARGET_IMAGES_PER_S = 11_000


def gpu_vit_stage(n: int, batch_size: int, compile_modes: tuple[str, ...] = ()) -> dict:
    """ViT-B/16 fp16 image tower on pre-decoded input (random weights): the GPU stage alone, eager and compiled."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    out = image_tower_rates("ViT-B-16", "cuda", torch.float16, n, batch_size, compile_modes)
    best = max([out["images_per_s"], *(c.get("images_per_s", 0) for c in out["compiled"].values())])
    out["target"] = f"{'PASS' if best >= VIT_TARGET_IMAGES_PER_S else 'FAIL'} best {best:.0f} images/s " \
                    f"(target >= {VIT_TARGET_IMAGES_PER_S})"
    return {**out, "device": torch.cuda.get_device_name()}


def image_tower_rates(model_name: str, device: str, dtype, n: int, batch_size: int,
                      compile_modes: tuple[str, ...] = ()) -> dict:
    """Images/s of ``model_name``'s image tower (random weights, ``dtype``) on one fixed batch, eager and under
    each ``torch.compile`` mode; a mode that fails reports its error instead of losing the others' figures."""
    import open_clip
    import torch

    model = open_clip.create_model(model_name, device=device).eval().to(dtype)
    x = torch.randn(batch_size, 3, *_image_size(model), device=device, dtype=dtype)
    steps = max(1, n // batch_size)
    out = {"model": model_name, "precision": str(dtype).removeprefix("torch."), "batch_size": batch_size,
           "images_per_s": round(_rate(model.encode_image, x, steps, device)[0], 1), "compiled": {}}
    print(f"{model_name} eager: {out['images_per_s']} images/s", flush=True)  # kept if a compilation times out
    for mode in compile_modes:
        try:
            rate, warmup = _rate(torch.compile(model.encode_image, mode=mode), x, steps, device)
            out["compiled"][mode] = {"images_per_s": round(rate, 1), "warmup_s": round(warmup, 1),
                                     "over_eager": round(rate / out["images_per_s"], 3)}
        except Exception as exc:  # noqa: BLE001  (a compiler failure is a figure of its own)
            out["compiled"][mode] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"}
        print(f"{model_name} {mode}: {out['compiled'][mode]}", flush=True)
    return out


def _image_size(model) -> tuple[int, int]:
    size = model.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _rate(encode, x, steps: int, device: str) -> tuple[float, float]:
    """(images/s over ``steps`` batches, seconds of the three warm-up batches: kernels, compilation, capture)."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(3):
            encode(x)
        sync()
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            encode(x)
        sync()
    return steps * len(x) / (time.perf_counter() - t0), warmup


def _print_table(figures: dict, args, small: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"embedding throughput, {args.n} images, {args.encoder}, {args.batch_size} per batch")
    table.add_column("pipeline")
    table.add_column("images/s", justify="right")
    table.add_column("ratio to plain", justify="right")
    table.add_row("plain PyTorch loop (1 process, all cores, model load included)",
                  f"{figures['plain_images_per_s']:.0f}", "1.00x")
    table.add_row("Ray, cold call (starts its encoder actors)", f"{figures['ray_images_per_s_cold']:.0f}",
                  f"{figures['ray_over_plain_cold']:.2f}x")
    table.add_row("Ray, end to end in a session (actors from an earlier call)",
                  f"{figures['ray_images_per_s_end_to_end']:.0f}", f"{figures['ray_over_plain_end_to_end']:.2f}x")
    table.add_row(f"Ray, steady state ({args.n - small} images past {small})",
                  f"{figures['ray_images_per_s_steady']:.0f}", f"{figures['ray_over_plain_steady']:.2f}x")
    console = Console()
    console.print(table)
    console.print(f"fixed cost of a cold call (actor process, imports, model load, Ray Data start): "
                  f"{figures['ray_startup_s']} s; of a call in a session: {figures['ray_session_overhead_s']} s")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synth-shapes")
    ap.add_argument("--encoder", default="tiny-clip")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--actors", type=int, default=None)
    ap.add_argument("--gpu-vit", action="store_true")
    ap.add_argument("--gpu-vit-only", action="store_true",
                    help="only the ViT-B/16 fp16 GPU stage: no Ray (whose wheel cannot be carried to a lent GPU)")
    ap.add_argument("--compile", default="", help="comma-separated torch.compile modes to time the GPU stage under "
                                                   "beside eager, e.g. default,max-autotune-no-cudagraphs")
    args = ap.parse_args(argv)
    args.compile = tuple(m for m in args.compile.split(",") if m)
    if args.gpu_vit_only:
        figures = {"gpu_vit_b16": gpu_vit_stage(args.n, args.batch_size, args.compile)}
        print("GPU stage:", figures["gpu_vit_b16"])
        print(json.dumps(figures))
        return figures

    from orchestrator.encoder_pool import encoder_session
    from orchestrator.ray_runtime import ensure_ray

    ensure_ray()
    plain_s = plain_loop(args.dataset, args.n, args.batch_size, args.encoder)
    cold_s = ray_pipeline(args.dataset, args.n, args.batch_size, args.encoder, args.actors)
    small = max(args.batch_size, args.n // 5)
    with encoder_session():
        ray_pipeline(args.dataset, args.batch_size, args.batch_size, args.encoder, args.actors)  # starts the actors
        ray_small_s = ray_pipeline(args.dataset, small, args.batch_size, args.encoder, args.actors)
        ray_s = ray_pipeline(args.dataset, args.n, args.batch_size, args.encoder, args.actors)
    steady = (args.n - small) / max(ray_s - ray_small_s, 1e-9)  # marginal rate: fixed costs cancel out
    figures = {
        "dataset": args.dataset, "encoder": args.encoder, "images": args.n, "batch_size": args.batch_size,
        "plain_images_per_s": round(args.n / plain_s, 1),
        "ray_images_per_s_cold": round(args.n / cold_s, 1),
        "ray_images_per_s_end_to_end": round(args.n / ray_s, 1),
        "ray_images_per_s_steady": round(steady, 1),
        "ray_startup_s": round(cold_s - args.n / steady, 1),
        "ray_session_overhead_s": round(ray_s - args.n / steady, 1),
        "ray_over_plain_cold": round(plain_s / cold_s, 3),
        "ray_over_plain_end_to_end": round(plain_s / ray_s, 3),
        "ray_over_plain_steady": round(steady / (args.n / plain_s), 3),
    }
    _print_table(figures, args, small)
    if args.gpu_vit:
        figures["gpu_vit_b16"] = gpu_vit_stage(args.n, args.batch_size, args.compile)
        print("GPU stage:", figures["gpu_vit_b16"])
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
