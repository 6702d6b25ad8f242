"""Development tools, run by hand, by CI or by benchmarks/ and never imported by the harness:
`python -m qwen_eval.tools.fixtures real-0.5b` fetches the real test checkpoint."""
