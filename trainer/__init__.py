"""trainer: config-driven transfer learning for PyTorch.

Importing the package stays cheap (no torch, no timm) so that `train --help`, `--cfg` and
config errors answer at once; the heavy modules are imported when a run is built.
"""

__version__ = "0.1.0"
