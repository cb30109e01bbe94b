"""Many prompts: trace a dataset into a store, diff two graphs, aggregate what recurs.

- `inputs`: prompt files (.txt, .jsonl, .csv) → PromptItems; `store`: the store (graphs/ + SQLite catalogue)
- `worker`: one loaded model copy tracing prompts; `local`, `ray_backend`: where the workers run; `run`: the driver
- `aggregate`, `consensus`: streaming sums and the group flowchart (node keys and the two-graph diff live in
  `mechscope.compare`, which the web page uses too)
- `config`: the options (dataclasses the CLI is generated from); `render`: text views; `eta`: progress

Nothing heavy is imported here: `mechscope.many.run.trace_many` and `mechscope.many.aggregate.aggregate_store` are the
entry points.
"""
