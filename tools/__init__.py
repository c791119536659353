"""Tools for developers and benchmarks, not part of the product: `python -m tools.slack_load`, `python -m tools.loop_demo`."""
