"""Comparing attribution graphs from their JSON alone: node keys that align two graphs, and their diff.

- `keys`: the key of a node across graphs (feature id or supernode label, tokens and logits by text)
- `diff`: what appears, disappears or changes between two graphs, ranked by influence; `config`: its options

Shared by the front ends that compare graphs (the CLI's `diff` and `aggregate`, the web page's compare view), which
may not import each other. Nothing heavy is imported: `mechscope.compare.diff.diff_graphs` is the entry point.
"""
