"""A run on disk: checkpoints (atomic writes, digests, storage errors), the run folder and its lock, finding
the run to resume and which of its stored overrides to trust, TensorBoard and metrics files, plots,
and the fault injection the tests use.

May import ``config`` only (and torch, lazily where ``cli`` reaches it); every room above may import it.
"""
