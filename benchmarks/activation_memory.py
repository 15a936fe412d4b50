"""How far `lmforge info`'s training-memory estimate is from what autograd really keeps.

For each model and with or without activation checkpointing, one training forward pass runs under
`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor saved for the backward pass; the unique
storages, less the parameters, are the activations actually held (fp32 here, so compared with twice the
estimate's 16-bit figure). With checkpointing only the block inputs are held; the estimate adds the one block
that is recomputed at a time in the backward pass (transient), so it is an upper bound there.

    python benchmarks/activation_memory.py [--batch 2] [--context 256]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch

from lmforge import ModelConfig, build_model
from lmforge.commands.info import analyse, training_memory
from lmforge.config import PRESETS


def saved_activation_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids)
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--models", default="gpt-mini,llama-tiny,bert-mini")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{'model':12s} {'recompute':9s} {'measured MiB':>12s} {'estimate MiB':>12s} {'ratio':>6s}")
    for name in args.models.split(","):
        config = replace(ModelConfig(**PRESETS[name]), dropout=0.0)
        for checkpointing in (False, True):
            model = build_model(config).train()
            model.set_activation_checkpointing(checkpointing)
            ids = torch.randint(0, config.vocab_size, (args.batch, args.context))
            measured = saved_activation_bytes(model, ids)
            estimate = 2 * training_memory(config, analyse(config, args.context, args.batch), 1, "ddp",
                                           checkpointing)["activations"]
            print(f"{name:12s} {'yes' if checkpointing else 'no':9s} {measured / 2**20:12.1f} {estimate / 2**20:12.1f} "
                  f"{estimate / measured:6.2f}")


if __name__ == "__main__":
    main()
