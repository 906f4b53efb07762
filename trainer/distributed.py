"""Data-parallel training with torch.distributed, started by torchrun.

``torchrun --nproc_per_node=N -m trainer ...`` (or ``train trainer.devices=N``, which starts torchrun)
runs one process per device. Each process trains on its shard of every epoch; DistributedDataParallel
averages the gradients; rank 0 alone logs, writes TensorBoard and checkpoints, in one run folder that
every rank shares. Nothing here imports torch until a run is distributed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init(use_cuda: bool) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU); torchrun's environment says where."""
    import torch
    import torch.distributed as dist

    if _initialized():
        return
    if use_cuda:
        torch.cuda.set_device(local_rank())
    backend = "nccl" if use_cuda else "gloo"
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend=backend)
        return
    # Under torchrun the agent's store can outlive a restart; keys of an earlier attempt (the dead
    # workers' addresses) must not be read by the new one, so each attempt gets its own prefix.
    import datetime

    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size(),
        is_master=not agent_store and rank() == 0,
        timeout=datetime.timedelta(minutes=10),
    )
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore(f"trainer/attempt{restart}", store),
        rank=rank(),
        world_size=world_size(),
    )


def shutdown() -> None:
    if is_distributed() and _initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(tensor: Any) -> Any:
    """Sum a tensor over ranks (in place); a no-op in one process."""
    if is_distributed() and _initialized():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def is_peer_failure(e: BaseException) -> bool:
    """An error from a collective whose other side went away (a killed or crashed rank)."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("Connection reset", "Connection closed", "gloo", "NCCL", "ProcessGroup")
    )


def any_rank(flag: bool, device: Any) -> bool:
    """True on every rank when it is true on any (agreement before a collective decision)."""
    if not (is_distributed() and _initialized()):
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _override(argv: list[str], key: str) -> str | None:
    for a in argv:
        if not a.startswith("-") and "=" in a and a.split("=", 1)[0].lstrip("+~") == key:
            return a.split("=", 1)[1].strip().strip("'\"")
    return None


def launch_if_asked(argv: list[str]) -> None:
    """``train trainer.devices=N`` (N > 1) outside torchrun: start torchrun with N processes on this node."""
    devices = _override(argv, "trainer.devices")
    if devices in (None, "1", "auto") or "WORLD_SIZE" in os.environ:
        return
    if any(a in ("-m", "--multirun") for a in argv):
        from trainer.errors import UserError

        raise UserError(
            f"trainer.devices={devices} starts torchrun for one run, and does not combine with -m: "
            "sweep with hydra/launcher=parallel (one GPU per job), or start each run with "
            "`train trainer.devices=N ...`."
        )
    try:
        n = int(devices)
    except ValueError:
        from trainer.errors import UserError

        raise UserError(
            f"trainer.devices={devices!r}: use an integer (processes on this node), e.g. trainer.devices=8."
        ) from None
    if n < 1:
        from trainer.errors import UserError

        raise UserError(f"trainer.devices={n}: use 1 or more.")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "trainer",
        *argv,
    ]
    print(
        f"starting {n} processes: torchrun --standalone --nproc_per_node={n} -m trainer {' '.join(argv)}",
        file=sys.stderr,
    )
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


def prepare_argv(argv: list[str], outputs: Path) -> list[str]:
    """Under torchrun: join the group, share one run folder, quiet ranks > 0, resume after a restart.

    Rank 0 names the run folder and broadcasts it (clocks of ranks differ by a second now and
    then). torchrun's run id maps to that folder in ``outputs/.torchrun/``, so after a restart
    (``--max-restarts``) every rank resumes the run from its last checkpoint.
    """
    if not is_distributed():
        return argv
    use_cuda = _override(argv, "trainer.device") != "cpu" and _cuda_available()
    init(use_cuda)
    run_dir = _override(argv, "hydra.run.dir")
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    mapping = outputs / ".torchrun" / run_id if run_id and run_id != "none" else None
    plan: dict[str, str | None] = {"run_dir": run_dir, "resume": None}
    if is_main():
        if run_dir is None:
            if restarts and mapping is not None and mapping.is_file():
                run_dir = mapping.read_text().strip()
            else:
                run_dir = str(outputs / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S"))
            plan["run_dir"] = run_dir
        if mapping is not None and not restarts:
            mapping.parent.mkdir(parents=True, exist_ok=True)
            mapping.write_text(str(run_dir))
        last = Path(str(run_dir)) / "checkpoints" / "last.pt"
        if restarts and last.is_file() and _override(argv, "resume") in (None, "null"):
            plan["resume"] = str(last.resolve())
            print(f"restart {restarts} of torchrun run {run_id}: resuming {last}", file=sys.stderr)
    plan = broadcast(plan)
    replaced = {"hydra.run.dir"} | ({"resume"} if plan["resume"] else set())
    out = [a for a in argv if not any(_override([a], key) is not None for key in replaced)]
    out.append(f"hydra.run.dir={plan['run_dir']}")
    if plan["resume"]:
        out.append(f"resume={plan['resume']}")
    if not is_main():  # one .hydra/ folder and one train.log, written by rank 0; the others say errors only
        out += ["hydra.output_subdir=null", "hydra/job_logging=other_rank"]
    return out


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def wrap_ddp(model: Any, device: Any, sync_bn: bool) -> Any:
    """DistributedDataParallel over the parameters that train now (frozen ones are left out)."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        from timm.layers import convert_sync_batchnorm  # also converts timm's BatchNormAct layers

        # in place below the top module: SyncBatchNorm layers replace the BatchNorm ones, keeping their state
        convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
