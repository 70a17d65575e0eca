"""Write a dataset's attribute files (AttrVR / BioMedVR sentences per class) with an LLM you configure.

    python experiments/attributes.py --dataset busi --base-url http://localhost:8000/v1 --model NAME
    python experiments/attributes.py --dataset busi --kinds confusion --base-url URL --model NAME --per-class 20

Any OpenAI-compatible chat-completions endpoint works (a local vLLM or
llama.cpp server, or a hosted API; the key is read from ``--api-key-env``,
default ``OPENAI_API_KEY``, and may be absent for local servers). For every
class and kind it asks for ``--per-class`` sentences with the papers' prompts:

* positive (AttrVR's descriptive set): "Describe the appearance of the {task} {class}";
* discriminative (AttrVR): "Describe the unique appearance of a/an {class} from the other {task}";
* confusion (BioMedVR eq. 10): "Generate the most visually confusing negative descriptions for class {class}".

and writes ``{"class": ["sentence", ...]}`` JSON where the card's
``attribute_files`` say (under the data root, or ``--out``), the layout the
cards read. Nothing here runs in the tests' sweeps; the endpoint is only ever
called by this command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("positive", "discriminative", "confusion")
PROMPTS = {
    "positive": "Describe the appearance of the {task} {cls}.",
    "discriminative": "Describe the unique appearance of {article} {cls} from the other {task}.",
    "confusion": "Generate the most visually confusing negative descriptions for class {cls}.",
}
INSTRUCTION = ("Answer with {n} short, different visual descriptions, one per line, each a phrase of at most "
               "20 words, without numbering or any other text.")


def prompt(kind: str, cls: str, task: str, n: int) -> str:
    article = "an" if cls[:1].lower() in "aeiou" else "a"
    return PROMPTS[kind].format(task=task, cls=cls, article=article) + " " + INSTRUCTION.format(n=n)


def parse_sentences(text: str, n: int) -> list[str]:
    """The answer's lines without bullets or numbering, de-duplicated, at most ``n``."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", line).strip().strip('"')
        if line and line.lower() not in {s.lower() for s in out}:
            out.append(line)
    return out[:n]


def chat(base_url: str, model: str, api_key: str | None, timeout: float = 120.0) -> Callable[[str], str]:
    """A function that sends one user message to an OpenAI-compatible endpoint and returns the reply."""

    def ask(message: str) -> str:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": message}],
                           "temperature": 0.7}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        request = urllib.request.Request(base_url.rstrip("/") + "/chat/completions", body, headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                reply = json.loads(response.read())
        except OSError as exc:
            raise SystemExit(f"the chat endpoint {base_url} did not answer ({exc}); check --base-url and the "
                             "server") from None
        return reply["choices"][0]["message"]["content"]

    return ask


def generate(card, kinds, ask: Callable[[str], str], per_class: int, task: str | None = None,
             progress: Callable[[str], None] = lambda _: None) -> dict[str, dict[str, list[str]]]:
    """kind -> class -> sentences; a class the model answers with fewer than 3 sentences is an error."""
    task = task or card.modality.replace("-", " ")
    out: dict[str, dict[str, list[str]]] = {}
    for kind in kinds:
        out[kind] = {}
        for cls in card.classes:
            progress(f"{kind}: {cls}")
            sentences = parse_sentences(ask(prompt(kind, cls, task, per_class)), per_class)
            if len(sentences) < 3:
                raise SystemExit(f"the model gave {len(sentences)} {kind} sentences for {cls!r}; top-k scoring "
                                 "needs at least 3 (k = 3): rerun, or use a stronger model")
            out[kind][cls] = sentences
    return out


def write_files(card, sentences: dict[str, dict[str, list[str]]], out_dir: Path | None = None) -> list[Path]:
    """Each kind's file where the card's ``attribute_files`` point (relative to ``out_dir`` or the data root)."""
    from datasets.descriptions import description_path

    written = []
    for kind, by_class in sentences.items():
        spec = card.attribute_files.get(kind)
        relative = spec.file if spec is not None else f"attributes/{card.name}/{kind}.json"
        path = (out_dir / Path(relative).name) if out_dir else description_path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(by_class, indent=2, ensure_ascii=False))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--base-url", required=True, help="e.g. http://localhost:8000/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--per-class", type=int, default=20, help="sentences per class and kind (AttrVR: 20)")
    ap.add_argument("--task", default=None, help="what the images are, e.g. 'breast ultrasound'; default: the card's "
                                                  "modality")
    ap.add_argument("--out", type=Path, default=None, help="default: where the card's attribute_files point")
    args = ap.parse_args(argv)
    from datasets.registry import get_card

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise SystemExit(f"unknown kinds {unknown}; known: {list(KINDS)}")
    card = get_card(args.dataset)
    ask = chat(args.base_url, args.model, os.environ.get(args.api_key_env))
    sentences = generate(card, kinds, ask, args.per_class, args.task, progress=lambda m: print(m, file=sys.stderr))
    paths = write_files(card, sentences, args.out)
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main()
