"""Multi-seed benchmarks: a spec (presets x envs-or-tasks x seeds x budget) -> ordinary run directories ->
a tidy results table -> statistics (rliable) -> a Markdown/HTML report with figures.

Modules: :mod:`spec` (parse and expand the grid), :mod:`executors` (local process pool, Ray),
:mod:`runner` (resume, failures, results table), :mod:`stats`, :mod:`report`.
"""
