"""Data-parallel plumbing on torch.distributed (no Ray here: xtra.studies.runner launches workers with Ray Train).

A `World` says who this process is (rank, size, device) and wraps the few collectives the loop
needs. `World()` is the single-process world: every collective is a no-op, so `xtra.pretrain`
runs the same code with or without peers.

`spawn(fn, world_size, *args)` runs `fn(world, *args)` in `world_size` fresh processes joined in a
gloo (CPU) or NCCL (one GPU per rank) group through a file:// rendezvous, and returns each rank's
result. It is how tests compare 2 workers with 1 without Ray; Ray Train's TorchTrainer sets the
group up itself (`World.from_torch()` then describes it).
"""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process' place among the data-parallel workers of one run.

    ``device``: the device this rank must train on when it uses a GPU (``cuda:<local rank>``), or
    None to let ``pretrain.device`` decide (CPU runs, single-process runs).
    ``group``: the torch.distributed process group (None = the default group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str | None = None
    group: Any = None

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"World(rank={self.rank}, size={self.size}): need 0 <= rank < size")
        if self.size > 1 and not dist.is_initialized():
            raise ValueError(f"World(size={self.size}) needs an initialized torch.distributed process group")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_torch(cls, device: str | None = None, local_rank: int | None = None) -> World:
        """The world of the initialized default process group (or the single-process world)."""
        if not dist.is_available() or not dist.is_initialized():
            return cls(device=device)
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank)) if local_rank is None else local_rank
        return cls(rank=rank, size=dist.get_world_size(), local_rank=local, device=device)

    # -- collectives (no-ops in a single-process world) ----------------------------------------

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over ranks (a new tensor; NaN/inf anywhere stays NaN/inf everywhere)."""
        if not self.distributed:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out / self.size

    def all_true(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every rank iff `flag` is True on every rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._collective_device(device))
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return bool(t.item())

    def broadcast_object(self, obj: Any, src: int = 0, device: torch.device | str = "cpu") -> Any:
        """`obj` from rank `src` on every rank (pickled; keep it small or CPU-resident)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        kwargs = {"device": self._collective_device(device)} if self._backend() == "nccl" else {}
        dist.broadcast_object_list(box, src=src, group=self.group, **kwargs)
        return box[0]

    def _backend(self) -> str:
        return str(dist.get_backend(self.group))

    def _collective_device(self, device: torch.device | str) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU ones.
        if self._backend() == "nccl":
            return torch.device(self.device) if self.device else torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def default_backend(use_gpu: bool) -> str:
    return "nccl" if use_gpu else "gloo"


def init_world(rank: int, size: int, init_method: str, backend: str = "gloo", timeout_s: float = 300) -> World:
    """Join a process group (file:// or tcp:// rendezvous) and return this process' World."""
    import datetime

    device = None
    if backend == "nccl":
        device = f"cuda:{rank % max(torch.cuda.device_count(), 1)}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return World(rank=rank, size=size, local_rank=rank, device=device)


def destroy_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _entry(rank: int, size: int, init_method: str, backend: str, threads: int, fn: Callable, args: tuple,
           results: Any) -> None:
    torch.set_num_threads(threads)
    try:
        world = init_world(rank, size, init_method, backend)
        try:
            out = fn(world, *args)
        finally:
            destroy_world()
        results.put((rank, True, out))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises
        results.put((rank, False, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
        raise SystemExit(1) from None


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo", threads: int = 1,
          timeout_s: float = 600) -> list[Any]:
    """Run `fn(world, *args)` on `world_size` new processes (spawned, so `fn` must be importable) joined
    in one process group; return the results by rank. Raises RuntimeError naming the failed rank."""
    import queue

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="xtra-dist-") as tmp:
        init_method = f"file://{Path(tmp) / 'rendezvous'}"
        procs = [ctx.Process(target=_entry, args=(r, world_size, init_method, backend, threads, fn, args, results),
                             daemon=False) for r in range(world_size)]
        for p in procs:
            p.start()
        got: dict[int, Any] = {}
        failures: list[str] = []
        try:
            while len(got) + len(failures) < world_size:
                try:
                    rank, ok, out = results.get(timeout=timeout_s)
                except queue.Empty:
                    raise RuntimeError(f"spawn: no result from {world_size - len(got)} rank(s) in {timeout_s:g}s") \
                        from None
                if ok:
                    got[rank] = out
                else:
                    failures.append(f"rank {rank}: {out}")
                    break  # the other ranks may now block in a collective: stop them below
        finally:
            if failures:
                for p in procs:
                    if p.is_alive():
                        p.kill()
            for p in procs:
                p.join(timeout=60)
                if p.is_alive():
                    p.kill()
                    p.join()
    if failures:
        raise RuntimeError("spawn: " + failures[0])
    return [got[r] for r in range(world_size)]
