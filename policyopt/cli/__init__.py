"""The ``policyopt`` command line: train, eval, list (and bench/report)."""
