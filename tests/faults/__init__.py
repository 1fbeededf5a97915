"""The fault and hostile-input suite (issue 8): ``pytest -m faults`` runs it alone.

Counts scale with the ``FAULT_SCALE`` environment variable (default 1: the issue's
figures, 1,000 provider-fault turns and 10,000 fuzzed frames); see ``support.scaled``.
"""
