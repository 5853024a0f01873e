"""Devices and processes: which device, whether we run under torchrun, and launching it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from gptpipe.config import Device
from gptpipe.errors import UserError


@dataclass(frozen=True)
class Proc:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def label(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return f"cpu:{torch.get_num_threads()}threads"


def relaunch(nproc: int, *, accelerate: bool = False, bf16: bool = False) -> None:
    """Re-exec this stage under `torchrun` (our loop) or `accelerate launch` (the TRL stages) when params ask
    for more than one process.

    The DVC command stays `python -m stages.X`; the stage decides how many processes it needs. Accelerate's
    multi-GPU launcher is torch's elastic launcher plus the ACCELERATE_* environment, so it starts N
    processes on CPU (gloo) as well; port 0 lets it pick a free one, as torchrun's --standalone does.
    """
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        module = sys.modules["__main__"].__spec__.name
        if accelerate:
            launcher = ["accelerate", "launch", "--multi_gpu", f"--num_processes={nproc}", "--num_machines=1",
                        "--main_process_port=0", f"--mixed_precision={'bf16' if bf16 else 'no'}",
                        "--dynamo_backend=no", "-m"]
        else:
            launcher = ["torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m"]
        args = [*launcher, module, *sys.argv[1:]]
        print(f"launching {nproc} processes: {' '.join(args)}", flush=True)
        os.execvp(args[0], args)


def wants_cuda(d: Device) -> bool:
    """Whether device params pick CUDA here; asking for cuda where none is visible is an error."""
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device.type is cuda but no CUDA GPU is visible: set device.type to auto or cpu")
    return d.type == "cuda" or (d.type == "auto" and torch.cuda.is_available())


def setup(d: Device, join: bool = True) -> Proc:
    """Pick the device and, launched by torchrun and asked to `join`, join the process group."""
    use_cuda = wants_cuda(d)
    if d.threads and not use_cuda:
        torch.set_num_threads(d.threads)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 matmuls on tensor cores
    if join and world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return Proc(rank, world, local, device)


def all_mean(x: float, proc: Proc) -> float:
    if proc.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=proc.device)
    torch_dist.all_reduce(t)
    return t.item() / proc.world


def barrier(proc: Proc) -> None:
    if proc.world > 1:
        torch_dist.barrier()


def teardown(proc: Proc) -> None:
    if proc.world > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
