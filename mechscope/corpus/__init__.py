"""Text: the offline corpus sources (documentation, WordNet, text sampled from a model), how they are named, mixed
and split into train and held-out parts (`sources`), and the sampler that writes the model's own text (`sampled`).

Torch-free at import: the CLI reads `sources.CORPUS_HELP` while it builds its options.
"""
