"""Decoding: greedy, sampling, beam search, batching, streaming, chat and prompting helpers.

`generate(model, prompt_or_prompts, **options)` is the entry point (also `lmforge.generate`); the options keep
transformers' names and meanings. The command-line entries are in `lmforge.commands.generate`.
"""

import sys
import types

from .api import GenerationOutput, generate, stream_text
from .chat import ChatSession, chat_repl
from .options import GenerationOptions
from .prompting import ContinuationScore, choose, few_shot_prompt, score_continuations

__all__ = ["generate", "GenerationOutput", "GenerationOptions", "stream_text", "ChatSession", "chat_repl",
           "few_shot_prompt", "score_continuations", "choose",
           "ContinuationScore"]


class _Package(types.ModuleType):
    """`lmforge.generate` names both this package and the function: importing a submodule (lmforge.generate.options)
    makes the package the attribute of `lmforge`, so the package calls the function too."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
