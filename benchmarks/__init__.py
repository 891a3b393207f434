"""Benchmarks of async_queue against hand-written and third-party baselines.

Run ``python -m benchmarks --help`` for the options, and see docs/benchmarks.md
for what each scenario measures and the latest figures. Every figure is taken
against its baselines in the same run, with the contenders interleaved, so that
drift on a shared machine hits all of them alike.
"""
