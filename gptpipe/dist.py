"""Devices and processes: which device, whether we run under torchrun, and launching it."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from gptpipe.config import Device, Post, Train
from gptpipe.errors import UserError

NODE_RANK = "GPTPIPE_NODE_RANK"  # which machine this is (0 to nnodes-1) when a stage spans several; 0 hosts


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


def relaunch(stage: str, s: Train | Post, *, accelerate: bool = False, bf16: bool = False) -> None:
    """Re-exec this stage under `torchrun` (our loop) or `accelerate launch` (the TRL stages) when params ask
    for more than one process or node.

    The DVC command stays `python -m stages.X`; the stage decides how many processes it needs. Accelerate's
    multi-GPU launcher is torch's elastic launcher plus the ACCELERATE_* environment, so it starts N
    processes on CPU (gloo) as well; port 0 lets it pick a free one, as torchrun's --standalone does.
    Across machines (`nnodes` > 1, our loop only) every node runs the stage with its own GPTPIPE_NODE_RANK
    and joins torchrun's c10d rendezvous at `rdzv_endpoint`, hosted by node 0.
    """
    nnodes = getattr(s, "nnodes", 1)  # the TRL stages run on one machine
    if (s.nproc > 1 or nnodes > 1) and "LOCAL_RANK" not in os.environ:
        module = sys.modules["__main__"].__spec__.name
        where = ""
        if accelerate:
            launcher = ["accelerate", "launch", "--multi_gpu", f"--num_processes={s.nproc}", "--num_machines=1",
                        "--main_process_port=0", f"--mixed_precision={'bf16' if bf16 else 'no'}",
                        "--dynamo_backend=no", "-m"]
        elif nnodes > 1:
            node = check_rendezvous(stage, s)
            where = f" on node {node} of {nnodes}"
            launcher = ["torchrun", f"--nnodes={nnodes}", f"--nproc_per_node={s.nproc}", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint={s.rdzv_endpoint}", f"--rdzv-id=gptpipe-{stage}",
                        f"--rdzv-conf=is_host={int(node == 0)},join_timeout={math.ceil(s.rdzv_timeout_s)}", "-m"]
        else:
            launcher = ["torchrun", "--standalone", f"--nproc_per_node={s.nproc}", "-m"]
        args = [*launcher, module, *sys.argv[1:]]
        print(f"launching {s.nproc} process{'es' * (s.nproc > 1)}{where}: {' '.join(args)}", flush=True)
        os.execvp(args[0], args)


def check_rendezvous(stage: str, t: Train) -> int:
    """This node's number, once the rendezvous can work: node 0 can listen at rdzv_endpoint, another node
    reaches it within rdzv_timeout_s. Bad input fails here in one line, not in torchrun's tracebacks."""
    raw = os.environ.get(NODE_RANK, "0")
    if not raw.isdigit() or int(raw) >= t.nnodes:
        raise UserError(f"{NODE_RANK}={raw}: {stage}.nnodes is {t.nnodes}, so set it to a number from 0 to "
                        f"{t.nnodes - 1}: 0 on the machine at {stage}.rdzv_endpoint, another on each other one")
    node = int(raw)
    host, _, port = t.rdzv_endpoint.rpartition(":")
    address, what = (host.strip("[]"), int(port)), f"{stage}.rdzv_endpoint {t.rdzv_endpoint}"
    if node == 0:
        try:
            socket.create_server(address).close()
        except OSError as e:
            raise UserError(f"{what}: node 0 cannot listen there ({e.strerror or e}); give this machine's address "
                            f"and a free port, or set {NODE_RANK}=1 (2, ...) on the machines that join it") from None
        return node
    deadline = time.monotonic() + t.rdzv_timeout_s
    while True:
        try:
            socket.create_connection(address, timeout=min(5.0, t.rdzv_timeout_s)).close()
            return node
        except OSError as e:
            if time.monotonic() > deadline:
                raise UserError(f"{what}: no rendezvous answered in {t.rdzv_timeout_s:g} s ({e.strerror or e}); "
                                f"start the stage on node 0 first, or fix the address") from None
            time.sleep(0.5)


def trainer_device() -> str:
    """The device type a trainer gets here: cuda where torch sees one (stage.py hides it from a CPU run), else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16(dtype: str = "auto", device_type: str | None = None) -> bool:
    """Whether to train under bf16 autocast: asked for, or (auto) on CUDA and on a CPU with bf16 matrix instructions
    (AMX, or AVX-512 BF16 as on AMD Zen 4). The device type defaults to `trainer_device()`."""
    device_type = device_type or trainer_device()
    if dtype == "auto":
        return device_type == "cuda" or (device_type == "cpu" and cpu_bf16())
    return dtype == "bfloat16"


def cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: there bf16 matmuls ran 2.1-3.5x fp32's FLOP/s on 2
    cores (AVX-512 BF16 on a Zen 4) and 5-7x (AMX, Sapphire Rapids); other CPUs train in fp32."""
    return any(getattr(torch.cpu, f, bool)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def wants_cuda(d: Device) -> bool:
    """Whether device params pick CUDA here; asking for cuda where none is visible is an error."""
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device.type is cuda but no CUDA GPU is visible: set device.type to auto or cpu")
    return d.type == "cuda" or (d.type == "auto" and torch.cuda.is_available())


# fp32 FLOP per cycle per core, by the vector unit torch dispatches to: two FMA pipes x lanes x 2 (multiply, add)
FLOP_PER_CYCLE = {"AVX512": 64, "AVX2": 32}


def peak_flops(d: Device) -> float:
    """device.peak_flops, or (null) an estimate of this CPU's fp32 peak for the threads torch uses: threads x FLOP per
    cycle x clock. An estimate: AMD cores before Zen 5 run AVX-512 at AVX2's width, and clocks move under load."""
    if d.peak_flops:
        return d.peak_flops
    if wants_cuda(d):
        raise UserError("device.peak_flops is null, which estimates a CPU's peak only: set it to your GPU's dense "
                        "bf16 FLOP/s in params.yaml (H100/H200: 9.89e14)")
    return torch.get_num_threads() * FLOP_PER_CYCLE.get(torch.backends.cpu.get_cpu_capability(), 8) * cpu_hz()


def cpu_hz() -> float:
    """The CPU's clock as Linux reports it (/proc/cpuinfo), else 3 GHz."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(float(line.split(":")[1]) * 1e6 for line in f if line.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        return 3e9


def setup(d: Device, join: bool = True) -> Proc:
    """Pick the device and, launched by torchrun and asked to `join`, join the process group."""
    use_cuda = wants_cuda(d)
    if d.threads and not use_cuda:
        torch.set_num_threads(d.threads)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", 1))
    if nodes > 1:
        # c10d numbers the nodes by host name and process id; number them by GPTPIPE_NODE_RANK instead, so
        # rank 0, which writes the outputs (transformers saves weights on rank 0 only), is node 0's first process.
        node = int(os.environ.get(NODE_RANK, 0))
        check_node_ranks(node, nodes)
        rank = node * int(os.environ["LOCAL_WORLD_SIZE"]) + local
        os.environ["RANK"] = str(rank)  # what init_process_group reads
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 matmuls on tensor cores
    if join and world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return Proc(rank, world, local, device)


def check_node_ranks(node: int, nodes: int) -> None:
    """Two machines with the same GPTPIPE_NODE_RANK would take the same ranks and hang in the join: every process
    reads each node's number from torchrun's store (the rendezvous's, on node 0) and refuses a clash."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # no store before init_process_group makes one
        return
    store = torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                timeout=timedelta(minutes=5))
    store.set(f"gptpipe/node/{os.environ['GROUP_RANK']}", str(node))
    keys = [f"gptpipe/node/{g}" for g in range(nodes)]
    store.wait(keys)
    numbers = sorted(int(store.get(k)) for k in keys)
    if numbers != list(range(nodes)):
        raise UserError(f"{NODE_RANK}: the {nodes} nodes are numbered {', '.join(map(str, numbers))}; give each "
                        f"machine its own number from 0 to {nodes - 1}")


def all_mean(x: float, proc: Proc) -> float:
    if proc.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=proc.device)
    torch_dist.all_reduce(t)
    return t.item() / proc.world


def agree(x: int, proc: Proc) -> bool:
    """Whether every process holds the same x (a collective: every process calls it)."""
    if proc.world == 1:
        return True
    t = torch.tensor([x, -x], dtype=torch.int64, device=proc.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)  # max and -min
    return t[0].item() == -t[1].item()


def barrier(proc: Proc) -> None:
    if proc.world > 1:
        torch_dist.barrier()


def teardown(proc: Proc) -> None:
    if proc.world > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
