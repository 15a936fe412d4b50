"""`lmforge prune` and `lmforge lowrank`: a smaller model from a checkpoint, written as an ordinary checkpoint."""

from __future__ import annotations

from typing import Any, Literal

PruneMethod = Literal["magnitude", "wanda", "2:4", "heads", "neurons", "heads,neurons"]
LowRankMethod = Literal["svd", "asvd", "svd-llm"]


def _source(checkpoint: str, out: str, calib: str | None, device: str, overwrite: bool) -> Any:
    """The model to compress, in float32, once --out and --calib are checked (nothing is loaded before)."""
    from pathlib import Path

    from .. import io as lio
    from ..checkpoint import is_lmforge_checkpoint
    from ..device import resolve_device
    from ..errors import DataError
    from ..loading import load

    lio.check_output(out, what="an lmforge checkpoint", overwrite=overwrite, ours=is_lmforge_checkpoint,
                     inputs=[checkpoint, calib])
    if calib is not None and not Path(calib).exists():
        raise DataError(f"--calib {calib} does not exist; give a prepared data folder, text files or a folder, or a "
                        ".tsv/.csv/.jsonl table")
    return load(checkpoint, device=resolve_device(device), dtype="fp32")


def _report(name: str, before: Any, after: Any, out: str, what: str) -> dict[str, Any]:
    p0, p1 = before, after.num_parameters()
    print(f"{what}: {p0 / 1e6:.2f}M -> {p1 / 1e6:.2f}M parameters ({p1 / p0:.1%}) -> {out}")
    return {"out": out, "parameters_before": p0, "parameters": p1, name: after.config.to_dict()[name]}


def prune_cli(checkpoint: str, *, out: str, method: PruneMethod = "wanda", sparsity: float = 0.5,
              amount: float = 0.3, calib: str | None = None, calib_samples: int = 64, calib_length: int = 256,
              text_column: str = "text", device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Prune a model: zero weights (magnitude, Wanda, 2:4) or remove attention heads and MLP neurons for a physically
    smaller model (heads, neurons, heads,neurons); the result is a checkpoint every command reads.

    Args:
        checkpoint: a checkpoint or run folder, Hugging Face folder, hub id or GGUF file
        out: folder of the pruned checkpoint
        method: magnitude | wanda | 2:4 (weights zeroed, same shape) or heads | neurons | heads,neurons (removed)
        sparsity: share of the weights zeroed in each layer (magnitude, wanda; 2:4 is always 0.5)
        amount: share of the heads and MLP neurons removed in each layer (structured)
        calib: calibration data (wanda, 2:4 and structured): prepared data folder, text files or folder, or a
            .tsv/.csv/.jsonl table
        calib_samples: calibration sequences
        calib_length: tokens per calibration sequence (at most)
        text_column: the text column of a --calib table
        device: cpu, cuda or auto
        overwrite: replace an lmforge checkpoint already in --out
    """
    from ..checkpoint import save, source_run_info
    from ..compress.prune import prune, sparsity_of

    model = _source(checkpoint, out, calib, device, overwrite)
    before = model.num_parameters()
    tokenizer = model.tokenizer
    pruned = prune(model, method, sparsity=sparsity, amount=amount, calib=calib, calib_samples=calib_samples,
                   calib_length=calib_length, text_column=text_column)
    save(pruned, out, tokenizer, overwrite=True, run=source_run_info(checkpoint))
    result = _report("pruning", before, pruned, out, f"pruned ({method})")
    if method in ("magnitude", "wanda", "2:4"):
        zeros = sparsity_of(pruned)
        result["sparsity"] = sum(zeros.values()) / len(zeros)
        print(f"{len(zeros)} layers at {min(zeros.values()):.2%} .. {max(zeros.values()):.2%} zeros (stored dense: "
              "the same size and speed on dense kernels)")
    else:
        c = pruned.config
        print(f"n_head {c.pruning['from']['n_head']} -> {c.n_head}, n_kv_head {c.pruning['from']['n_kv_head']} -> "
              f"{c.n_kv_head}, d_ff {c.pruning['from']['d_ff']} -> {c.d_ff}")
    return result


def lowrank_cli(checkpoint: str, *, out: str, rank_ratio: float = 0.5, method: LowRankMethod = "asvd",
                calib: str | None = None, calib_samples: int = 64, calib_length: int = 256,
                text_column: str = "text", device: str = "cpu", merge: bool = False,
                overwrite: bool = False) -> dict[str, Any]:
    """Factorise every attention and MLP projection into two low-rank linear layers (SVD, activation-aware SVD or
    whitened SVD); the checkpoint records the ranks and loads like any other.

    Args:
        checkpoint: a checkpoint or run folder, Hugging Face folder, hub id or GGUF file
        out: folder of the factorised checkpoint
        rank_ratio: share of each factorised layer's parameters kept (0.5 = half; 0.8 = a fifth fewer)
        method: svd (plain truncated SVD), asvd (scaled by mean input magnitudes) or svd-llm (whitened by the input
            covariance: the least output error)
        calib: calibration data (asvd, svd-llm): prepared data folder, text files or folder, or a .tsv/.csv/.jsonl
            table
        calib_samples: calibration sequences
        calib_length: tokens per calibration sequence (at most)
        text_column: the text column of a --calib table
        device: cpu, cuda or auto
        merge: the other way: multiply a factorised checkpoint's factors back into dense layers (for export gguf,
            onnx, to-hf, which write plain layers)
        overwrite: replace an lmforge checkpoint already in --out
    """
    from ..checkpoint import save, source_run_info
    from ..compress.lowrank import factorize, merge_lowrank
    from ..errors import ConfigError

    model = _source(checkpoint, out, calib, device, overwrite)
    before = model.num_parameters()
    if merge:
        if not model.config.lowrank:
            raise ConfigError(f"{checkpoint} has no factorised layers to merge (its config has no lowrank entry)")
        tokenizer = model.tokenizer
        save(merge_lowrank(model), out, tokenizer, overwrite=True, run=source_run_info(checkpoint))
        return _report("lowrank", before, model, out, "merged into dense layers")
    ranks = factorize(model, rank_ratio, method, calib=calib, calib_samples=calib_samples,
                      calib_length=calib_length, text_column=text_column)
    save(model, out, model.tokenizer, overwrite=True, run=source_run_info(checkpoint))
    print(f"{len(ranks)} layers factorised, ranks {min(ranks.values())} .. {max(ranks.values())}")
    return _report("lowrank", before, model, out, f"factorised ({method}, rank ratio {rank_ratio})")


__all__ = ["prune_cli", "lowrank_cli"]
