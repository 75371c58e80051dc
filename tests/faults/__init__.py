"""Fault-injection suite: history recording and the checkers that judge a run.

history.py records what clients asked and were told; linearizability.py checks the per-key
register histories (WGL with memoization); checks.py holds fencing, watch and lost-write checks;
generate.py builds valid histories from a reference model to test the checkers themselves.
"""
