"""The shell's side: the `train` command (its steps before Hydra, in order, then `@hydra.main`), `train --help`,
and the console entry points of every command.

Imports no torch at module level (a mistyped key is answered before torch is imported). Nothing in
the package imports ``trainer.cli``: it is the top room.
"""
