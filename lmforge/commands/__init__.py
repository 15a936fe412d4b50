"""Command-line entry functions that are not a task module's own (generation, conversion, evaluation, tokenizers,
LoRA merge, info, demo): each a typed function that `lmforge.cli` turns into `lmforge <verb>`. They import the
library lazily, inside the function, so `lmforge <verb> --help` loads nothing heavy."""
