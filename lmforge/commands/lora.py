"""`lmforge lora merge`: fold a LoRA adapter into plain weights, for export and serving."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def merge_cli(checkpoint: str, *, out: str, adapter: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Merge a LoRA run's adapter into its base weights and save a plain checkpoint (no lora in its config).

    Args:
        checkpoint: a LoRA fine-tuning run or checkpoint folder; or, with --adapter, the base model
        out: folder of the merged checkpoint
        adapter: an adapter folder (adapter.safetensors + adapter_config.json) to put on CHECKPOINT first
        overwrite: replace an lmforge checkpoint already in --out
    """
    from .. import io as lio
    from ..checkpoint import is_lmforge_checkpoint, load_adapter, save
    from ..loading import load
    from ..model.lora import merge_lora

    lio.check_output(out, what="an lmforge checkpoint", overwrite=overwrite, ours=is_lmforge_checkpoint,
                     inputs=[checkpoint, adapter])
    model = load(checkpoint, dtype="fp32")
    tokenizer = model.tokenizer
    if adapter:
        model = load_adapter(model, adapter)
    if not model.config.lora:
        raise ConfigError(f"{checkpoint} has no LoRA adapter to merge (its config has no lora entry); give --adapter")
    merged = merge_lora(model)
    save(merged, out, tokenizer, overwrite=True)
    print(f"merged the LoRA adapter into {merged.num_parameters() / 1e6:.2f}M plain weights -> {out}")
    return {"out": out, "parameters": merged.num_parameters()}
