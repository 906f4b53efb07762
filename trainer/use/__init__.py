"""Using a trained model: the `predict`, `evaluate` and `export-model` commands, their ``key=value``
arguments, and where they may write (only files of their own kind are replaced).

May import every room but ``cli`` and ``sweeps``; imported by ``cli.entry``.
"""
