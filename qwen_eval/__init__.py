"""qwen-eval: reproduce, and go past, the Qwen-14B model card's benchmark table."""

__version__ = "0.1.0"
