"""`python -m qwen_eval ...` (and `torchrun ... -m qwen_eval ...`) is the `qwen-eval` command."""

from qwen_eval.cli import main

main()
