"""Frozen vision-language encoders, loaded the same way everywhere.

An encoder is named by one string:

* ``tiny-clip`` -- the shipped offline default (``methods/core/weights``);
* ``MODEL:TAG`` -- an open_clip architecture and pretrained tag, e.g.
  ``ViT-B-16:openai``; the weights must already be in the local
  Hugging Face / open_clip cache, because nothing is downloaded at run time;
* ``MODEL:/path/to/weights.bin`` -- an air-gapped site's local checkpoint;
* ``local-dir:/path`` -- a folder with ``open_clip_config.json`` and weights.

Whatever the spelling, the model is built by
``open_clip.create_model_and_transforms``; the tiny CLIP is no exception, so
every code path the tests exercise is the one real checkpoints take.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from .devices import pick_device

PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
TINY_CLIP_MODEL = "tiny-clip"
TINY_CLIP_CHECKPOINT = PACKAGE_DIR / "weights" / "tiny-clip.pt"
DEFAULT_ENCODER = TINY_CLIP_MODEL

Precision = Literal["fp32", "fp16", "bf16"]


class EncoderUnavailableError(RuntimeError):
    """The requested weights are not on this machine; the message says how to provide them."""


def offline_hub() -> None:
    """Offline by design: a missing file must fail at once, never try the network.

    Called by the functions that resolve or load weights, not at import, so
    importing this module changes no environment variable. The entry points
    (``experiments/*.py``) and Ray workers (``orchestrator.ray_runtime``) set
    the variable too, before Hugging Face libraries read it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def register_model_configs() -> None:
    """Make the project's own architectures (the tiny CLIP) known to open_clip."""
    import open_clip

    if TINY_CLIP_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def known_encoders() -> dict[str, str]:
    """Short names this project resolves by itself, with what they mean."""
    return {
        TINY_CLIP_MODEL: f"shipped tiny CLIP ({TINY_CLIP_CHECKPOINT.relative_to(PACKAGE_DIR.parent)})",
        "MODEL:TAG": "open_clip model + pretrained tag from the local cache, e.g. ViT-B-16:openai",
        "MODEL:/path/to/weights": "open_clip model + a local checkpoint file (air-gapped sites)",
        "local-dir:/path": "a folder holding open_clip_config.json and the weights",
    }


def _fingerprint(path: Path) -> str:
    """Cheap identity of a weights file: size plus hashes of its first and last MiB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if path.stat().st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder name: which architecture, which weights, which numeric precision."""

    name: str
    model: str
    weights: Path | None  # resolved local file (None: local-dir schema resolves its own)
    tag: str | None = None
    preprocess_overrides: dict = field(default_factory=dict, hash=False, compare=False)
    precision: Precision = "fp32"

    @cached_property
    def key(self) -> str:
        """Directory-safe identity used by the feature cache: never mixes weights or precisions."""
        source = self.weights if self.weights is not None else Path(self.model.split(":", 1)[1]) / "open_clip_config.json"
        stem = (self.tag or Path(source).stem).replace("/", "-")
        model = self.model.replace("/", "-").replace(":", "-")
        return f"{model}__{stem}__{self.precision}__{_fingerprint(Path(source))}"


def parse_encoder(name: str, precision: Precision = "fp32", cache_dir: str | None = None) -> EncoderSpec:
    """Resolve an encoder name to local files, failing at once if they are absent."""
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be one of fp32, fp16, bf16; got {precision!r}")
    offline_hub()
    register_model_configs()
    if name == TINY_CLIP_MODEL:
        if not TINY_CLIP_CHECKPOINT.is_file():
            raise EncoderUnavailableError(
                f"the shipped tiny CLIP checkpoint is missing at {TINY_CLIP_CHECKPOINT}; "
                "restore it from git or retrain it with `python experiments/train_tiny_clip.py`"
            )
        return EncoderSpec(name, TINY_CLIP_MODEL, TINY_CLIP_CHECKPOINT, precision=precision)
    if name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise EncoderUnavailableError(
                f"{name}: expected {folder / 'open_clip_config.json'} and a weights file beside it "
                "(open_clip_model.safetensors or open_clip_pytorch_model.bin)"
            )
        return EncoderSpec(name, f"local-dir:{folder}", None, precision=precision)
    if ":" not in name:
        raise ValueError(
            f"unknown encoder {name!r}; known forms: "
            + "; ".join(f"{k} ({v})" for k, v in known_encoders().items())
        )
    model, weights = name.split(":", 1)
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model!r}; known: {', '.join(sorted(open_clip.list_models()))}")
    path = Path(weights).expanduser()
    if path.is_file():
        return EncoderSpec(name, model, path, precision=precision)
    if weights.startswith(("/", ".", "~")) or os.sep in weights:
        raise EncoderUnavailableError(f"{name}: no checkpoint file at {path}")
    return _resolve_tag(name, model, weights, precision, cache_dir)


def _resolve_tag(name: str, model: str, tag: str, precision: Precision, cache_dir: str | None) -> EncoderSpec:
    """Find a pretrained tag's weights in the local caches (never on the network)."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        raise ValueError(
            f"{name}: {tag!r} is not a pretrained tag of {model}; known tags: "
            f"{', '.join(list_pretrained_tags_by_model(model)) or 'none'}; or pass a local file as {model}:/path"
        )
    candidates: list[Path] = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # a trailing slash means the default file names
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fname in names:
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(hit, str):
                candidates.append(Path(hit))
    if cfg.get("url"):
        clip_cache = Path(cache_dir or "~/.cache/clip").expanduser()
        candidates.append(clip_cache / os.path.basename(cfg["url"]))
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        where = cfg.get("hf_hub") or cfg.get("url")
        raise EncoderUnavailableError(
            f"weights for {model} / {tag} are not available offline (source: {where}). "
            f"On a connected machine run `python -c \"import open_clip; "
            f"open_clip.create_model('{model}', pretrained='{tag}')\"` and copy the Hugging Face cache "
            f"(~/.cache/huggingface) here, or download the file and pass --encoder {model}:/path/to/weights"
        )
    overrides = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    return EncoderSpec(name, model, found, tag=tag, preprocess_overrides=overrides, precision=precision)


class FrozenEncoder:
    """An open_clip model in eval mode with gradients off: the unit the feature cache runs."""

    def __init__(self, spec: EncoderSpec, device: str | None = None):
        import open_clip
        import torch

        offline_hub()
        register_model_configs()  # also in Ray workers, which start with a fresh open_clip registry
        self.spec = spec
        self.device = pick_device(device)
        if spec.precision != "fp32" and self.device == "cpu" and spec.precision == "fp16":
            raise ValueError("fp16 needs a GPU; use fp32 or bf16 on CPU")
        kwargs = {}
        for src, dst in (("mean", "image_mean"), ("std", "image_std"),
                         ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
            if src in spec.preprocess_overrides:
                kwargs[dst] = spec.preprocess_overrides[src]
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=str(spec.weights) if spec.weights else None, device=self.device, **kwargs
        )
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec.precision]

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def preprocess_id(self) -> str:
        """Hash of the exact image transform: caches of different preprocessing never mix."""
        return hashlib.sha256(repr(self.preprocess).encode()).hexdigest()[:12]

    def encode_images(self, pixels):
        """L2-normalised image embeddings (float32 on CPU) of a preprocessed batch."""
        import torch

        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=self.dtype,
                                                    enabled=self.dtype != torch.float32):
            out = self.model.encode_image(pixels.to(self.device), normalize=True)
        return out.float().cpu()

    def encode_texts(self, texts: list[str], batch_size: int = 256):
        """L2-normalised text embeddings (float32 on CPU)."""
        import torch

        chunks = []
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=self.dtype,
                                                    enabled=self.dtype != torch.float32):
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[i: i + batch_size]).to(self.device)
                chunks.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(chunks)


def load_encoder(name: str = DEFAULT_ENCODER, precision: Precision = "fp32", device: str | None = None) -> FrozenEncoder:
    return FrozenEncoder(parse_encoder(name, precision), device)


def build_preprocess(spec: EncoderSpec):
    """The encoder's evaluation transform, built from configs alone (no weights loaded).

    CPU decode workers need the exact transform the model was trained with,
    but must not load a multi-GB model to get it. A test checks that this equals
    the transform ``open_clip.create_model_and_transforms`` returns.
    """
    import json
    from dataclasses import asdict

    from open_clip.factory import get_model_config, merge_preprocess_dict
    from open_clip.transform import PreprocessCfg, image_transform_v2

    register_model_configs()
    preprocess = asdict(PreprocessCfg())
    if spec.model.startswith("local-dir:"):
        config = json.loads((Path(spec.model.split(":", 1)[1]) / "open_clip_config.json").read_text())
        model_cfg = config["model_cfg"]
        preprocess = merge_preprocess_dict(preprocess, config.get("preprocess_cfg", {}))
    else:
        model_cfg = get_model_config(spec.model)
    preprocess = merge_preprocess_dict(preprocess, spec.preprocess_overrides)
    size = model_cfg["vision_cfg"].get("image_size", preprocess["size"])
    preprocess["size"] = size
    return image_transform_v2(PreprocessCfg(**preprocess), is_train=False)
