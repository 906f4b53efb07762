"""Data-parallel training with torch.distributed, started by torchrun.

``torchrun --nproc_per_node=N -m trainer ...`` (or ``train trainer.devices=N``, which starts torchrun)
runs one process per device. Each process trains on its shard of every epoch; DistributedDataParallel
averages the gradients; rank 0 alone logs, writes TensorBoard and checkpoints, in one run folder that
every rank shares.

``launch``: this process's rank and world, starting torchrun, one run folder for all ranks (no torch
imported: ``cli`` uses it). ``collectives``: the process group, DDP, broadcast / gather / sums
(torch). May import ``config`` only; imported by ``loop``, ``data`` and above.
"""
