"""Applications built on lmforge's models: attention maps, sentence embeddings and semantic search with retrieval
QA, knowledge-graph extraction, an n-gram baseline, adversarial probes. Each module is a library (functions on a
loaded `Transformer`); the commands are in `lmforge.commands.apps`."""
