"""Run by torchrun in tests/e2e/test_streamed_data.py: each rank builds the training loader the way
`train` does (data/loaders.py: build_loaders, with its rank and the world size) over shards read by index
or streamed, reads two epochs, and writes the samples it saw, so the test can count them.

    python -m torch.distributed.run --nproc_per_node=2 count_samples.py TRAIN VAL indexed|stream OUT
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from trainer.data.loaders import build_loaders
from trainer.data.sharded import load_webdataset

SPEC = {"size": 16, "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}


def main() -> None:
    train, val, how, out = sys.argv[1:5]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    splits = load_webdataset(train, val, streaming=how == "stream")
    loaders = build_loaders(splits, SPEC, batch_size=8, num_workers=2, augment="none", rank=rank, world_size=world)
    epochs = []
    for epoch in range(2):
        loaders.sampler.set_epoch(epoch)
        seen = []
        for batch in loaders.train:
            pieces = batch if isinstance(batch, list) else [batch]  # a batch built in pieces by the workers
            for x, _, _ in pieces:
                seen += [int(img[0, 0, 0]) + 256 * int(img[1, 0, 0]) for img in x]  # each image names itself
        epochs.append(seen)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"epochs": epochs, "batches": len(loaders.train)}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
