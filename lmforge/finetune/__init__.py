"""Fine-tuning and evaluation: classification, NER, seq2seq and chat SFT with full, frozen-backbone and LoRA
training, on the one training loop (see docs/finetuning.md)."""
