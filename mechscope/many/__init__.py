"""Many prompts: trace a dataset into a store, diff two graphs, aggregate what recurs.

- `inputs`: prompt files (.txt, .jsonl, .csv) → PromptItems; `store`: the store (graphs/ + SQLite catalogue)
- `worker`: one loaded model copy tracing prompts; `local`, `ray_backend`: where the workers run; `run`: the driver
- `keys`, `diff`: aligning and comparing two graphs; `aggregate`, `consensus`: streaming sums and the group flowchart
- `config`: the options (dataclasses the CLI is generated from); `render`: text views; `eta`: progress

Nothing heavy is imported here: `mechscope.many.run.trace_many`, `mechscope.many.diff.diff_graphs` and
`mechscope.many.aggregate.aggregate_store` are the entry points.
"""
