"""Shared state: tokens, OAuth states, per-call claims and reads, who is on a call, client edits.

The seams are in :mod:`router.state.protocols`; ``memory`` keeps state in the process (tokens in
a 0600 file) and the ``redis_*`` modules share it between replicas. :mod:`router.state.factory`
builds the set the configuration asks for.
"""
