"""Tracing speed and peak memory on fixed prompts (prints numbers; not a test). Same as `mechscope bench`.

python benchmarks/bench_trace.py --model gemma3-270m --max-feature-nodes 2048
"""

import sys

from mechscope.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
