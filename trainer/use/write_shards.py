"""`write-shards`: any data option written once as WebDataset shards, for `train data=webdataset`.

    write-shards data=<option> [data.root=DIR] [any data.* key as for train] out=DIR [maxcount=10000]
                 [maxsize=1e9]

The data are read exactly as `train` reads them (the same option, split and seed) and written with the
``webdataset`` library's ``ShardWriter``: DIR/train-000000.tar, ... and DIR/val-000000.tar, ..., a new
shard after ``maxcount`` samples or ``maxsize`` bytes, each sample its image (a file's own bytes when it
is a .jpg, .png or .webp, else PNG) and its class index (``.cls``), DIR/classes.txt with the class
names and DIR/sizes.json with each shard's samples (a streamed run's exact epoch length). Then `train data=webdataset data.train=DIR/train-*.tar data.val=DIR/val-*.tar` trains on the
same images, split and labels. Multiclass and binary data.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

from trainer.data.sources import require
from trainer.errors import UserError
from trainer.use.command import parse_args, run_command

log = logging.getLogger("trainer")

KEYS = {"out": "", "maxcount": "10000", "maxsize": "1e9"}
CONFIG_PREFIXES = ("data=", "data.", "seed=")
KEPT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}  # written as they are


def encoded(images: Any, index: int) -> tuple[str, bytes]:
    """(extension, bytes) of one image: a file's or a container's own bytes when WebDataset decoders
    read them as they are, else the decoded image as PNG."""
    from PIL import Image

    paths, names = getattr(images, "paths", None), getattr(images, "names", None)
    source = paths[index] if paths is not None else names[index] if names is not None else ""
    ext = KEPT.get(Path(str(source).split("#")[0]).suffix.lower()) if paths is not None else None
    if ext is not None:
        return ext, Path(source).read_bytes()
    if hasattr(images, "fetch"):
        data = images.fetch(index)
        kind = Image.open(io.BytesIO(data)).format
        if kind in ("JPEG", "PNG", "WEBP"):
            return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[kind], data
    pixels = images.load(index)  # uint8 (3, H, W)
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return "png", buffer.getvalue()


def write_split(images: Any, pattern: str, maxcount: int, maxsize: float) -> int:
    import webdataset

    with webdataset.ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize, verbose=0) as sink:
        for i in range(len(images)):
            ext, data = encoded(images, i)
            sink.write({"__key__": f"{i:09d}", ext: data, "cls": str(int(images.targets[i])).encode()})
        return sink.shard


def shard_sizes(out: Path) -> dict[str, int]:
    """Samples per shard (sizes.json): a streamed run's epoch length, exact rather than estimated."""
    from trainer.data.containers import index_shard

    return {f.name: len(index_shard(str(f), "cls", None)) for f in sorted(out.glob("*.tar"))}


def write_shards(argv: list[str]) -> tuple[Path, dict[str, int], list[str]]:
    from trainer.config.tasks import task_named
    from trainer.use.check_data import build

    overrides = [a for a in argv if a.startswith(CONFIG_PREFIXES)]
    args = parse_args([a for a in argv if a not in overrides], KEYS, ("out",), __doc__ or "")
    if not any(o.startswith("data=") for o in overrides):
        raise UserError("write-shards needs the data to write: data=imagefolder data.root=DIR (or any data option).")
    try:
        maxcount, maxsize = int(args["maxcount"]), float(args["maxsize"])
    except ValueError:
        raise UserError(
            f"maxcount={args['maxcount']!r} / maxsize={args['maxsize']!r}: give numbers (e.g. maxcount=10000)."
        ) from None
    if maxcount < 1 or maxsize < 1e4:
        raise UserError(f"maxcount={maxcount} / maxsize={maxsize:g}: give at least one sample and 10 kB a shard.")
    out = Path(str(args["out"])).expanduser()
    if out.is_dir() and any(out.glob("*.tar")):
        raise UserError(f"out={str(out)!r} already holds .tar shards: give a new or empty folder.")
    splits, _ = build(overrides)
    require(splits.train, "verify", "write-shards")
    if not task_named(splits.task).one_label:
        raise UserError(
            f"write-shards writes one class per image; this data's task ({splits.task}) has more (multilabel, segmentation)."
        )
    out.mkdir(parents=True, exist_ok=True)
    shards = {
        name: write_split(images, str(out / f"{name}-%06d.tar"), maxcount, maxsize)
        for name, images in (("train", splits.train), ("val", splits.val))
    }
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in splits.classes))
    (out / "sizes.json").write_text(json.dumps(shard_sizes(out), indent=1))
    return out, shards, list(splits.classes)


def main() -> None:
    def body() -> None:
        out, shards, classes = write_shards(sys.argv[1:])
        print(
            f"wrote {shards['train']} train and {shards['val']} val shard(s), classes.txt ({len(classes)} classes) and sizes.json in {out}"
        )
        print(f"train on them: train data=webdataset data.train={out}/train-*.tar data.val={out}/val-*.tar")

    run_command(body)


if __name__ == "__main__":
    main()
