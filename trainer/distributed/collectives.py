"""The process group and what ranks do together: join, one run folder for all ranks, DDP, broadcast,
gather, sums, agreeing on a flag, telling a lost peer from another error."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainer.distributed.launch import (
    cuda_available,
    is_distributed,
    is_main,
    local_rank,
    override_value,
    rank,
    world_size,
)

__all__ = ["is_distributed", "is_main", "local_rank", "rank", "world_size"]  # with the collectives below


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(use_cuda: bool) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU); torchrun's environment says where."""
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


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(tensor: Any) -> Any:
    """Sum a tensor over ranks (in place); a no-op in one process."""
    if is_distributed() and _initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def is_peer_failure(e: BaseException) -> bool:
    """An error from a collective whose other side went away (a killed or crashed rank)."""
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
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap_ddp(model: Any, device: Any, sync_bn: bool) -> Any:
    """DistributedDataParallel over the parameters that train now (frozen ones are left out)."""
    if sync_bn:
        from timm.layers import convert_sync_batchnorm  # also converts timm's BatchNormAct layers

        # in place below the top module: SyncBatchNorm layers replace the BatchNorm ones, keeping their state
        convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def prepare_argv(argv: list[str], outputs: Path) -> list[str]:
    """Under torchrun: join the group, share one run folder, quiet ranks > 0, resume after a restart.

    Rank 0 names the run folder and broadcasts it (clocks of ranks differ by a second now and
    then). torchrun's run id maps to that folder in ``outputs/.torchrun/``, so after a restart
    (``--max-restarts``) every rank resumes the run from its last checkpoint.
    """
    use_cuda = override_value(argv, "trainer.device") != "cpu" and cuda_available()
    init(use_cuda)
    run_dir = override_value(argv, "hydra.run.dir")
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
        if restarts and last.is_file() and override_value(argv, "resume") in (None, "null"):
            plan["resume"] = str(last.resolve())
            print(f"restart {restarts} of torchrun run {run_id}: resuming {last}", file=sys.stderr)
    plan = broadcast(plan)
    replaced = {"hydra.run.dir"} | ({"resume"} if plan["resume"] else set())
    out = [a for a in argv if not any(override_value([a], key) is not None for key in replaced)]
    out.append(f"hydra.run.dir={plan['run_dir']}")
    if plan["resume"]:
        out.append(f"resume={plan['resume']}")
    if not is_main():  # one .hydra/ folder and one train.log, written by rank 0; the others say errors only
        out += ["hydra.output_subdir=null", "hydra/job_logging=other_rank"]
    return out
