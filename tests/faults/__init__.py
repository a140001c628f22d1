"""The fault and abuse suite (issue 9): crashes, restarts, overlap, load and hostile input against the invariants.

The scenarios live in `scenarios.py` and are shared by the tests here and by the soak (`make soak`, `soak.py`),
which runs them with bigger numbers for a configurable time.
"""
