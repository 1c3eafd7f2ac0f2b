"""Replay GPU-utilisation traces through the real policy and ladder: trace files (CSV), traces
read from the clouds, synthetic training traces, and the replay itself (``replay.replay``).
Nothing is re-exported.
"""
