"""Check the papers' reference files: names the configs know, numbers the papers print.

    python experiments/check_references.py            # every file in experiments/references/
    python experiments/check_references.py cec valiant

Exit code 1 and one line per problem when a file names a dataset, method, budget or backbone that its
paper configs do not run, or holds a number that does not occur in the paper's text (a typing error).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCES = ROOT / "experiments" / "references"
PAPER_CONFIGS = ROOT / "experiments" / "configs" / "papers"


def papers_dir() -> Path:
    """The papers' texts: $ALVLM_PAPERS, else shared/papers beside the checkout, else the workspace's."""
    candidates = [os.environ.get("ALVLM_PAPERS"), ROOT.parent / "shared" / "papers", "/work/shared/papers"]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), Path(candidates[1]))


def problems(paper: str) -> list[str]:
    from datasets.registry import list_datasets
    from orchestrator.config import load_config
    from orchestrator.reporting.references import load_reference, numbers_missing_from_text, validate_reference

    ref = load_reference(REFERENCES, paper)
    configs = [load_config(PAPER_CONFIGS / f"{name}.yaml") for name in ref.configs]
    out = validate_reference(ref, configs, set(list_datasets()))
    text_path = papers_dir() / ref.text
    if not text_path.is_file():
        return out + [f"{paper}: the paper's text {text_path} is missing (set ALVLM_PAPERS)"]
    out += [f"{paper}: {col} {value:g} does not occur in {ref.text}"
            for col, value in numbers_missing_from_text(ref, text_path.read_text())]
    return out


def main(argv: list[str] | None = None) -> int:
    from orchestrator.reporting.references import available_papers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("papers", nargs="*", help=f"default: all ({', '.join(available_papers(REFERENCES))})")
    args = ap.parse_args(argv)
    found = [p for paper in (args.papers or available_papers(REFERENCES)) for p in problems(paper)]
    print("\n".join(found) if found else "reference files: no problems")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
