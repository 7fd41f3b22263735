"""Process-group setup and small collectives, in one place (DINO ``utils`` style).

Launch modes, in order of precedence (see ``launch``):
1. ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment, ``env://``);
2. SLURM with several tasks (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``; the master is
   the first node of ``SLURM_JOB_NODELIST`` unless ``MASTER_ADDR`` is set);
3. the original MoCo flags ``--multiprocessing-distributed --dist-url --world-size --rank``
   (``world_size`` nodes, one process per GPU via ``mp.spawn``; one process per node with gloo
   on machines without CUDA), or ``--world-size N --rank R`` for one process per node;
4. a plain single process on one GPU (``--gpu``) or the CPU.
NCCL is used with CUDA, gloo otherwise.

Elastic restarts (``torchrun --max-restarts N``): the restarted workers keep talking to the
agent's rendezvous TCP store, which torchrun shares between attempts (unless the agent runs
with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``). The keys of the failed attempt (gloo's peer
addresses among them) are still in it under the same names, so a new worker can read a dead
peer's address (reported as a hang in gloo's ``connectFullMesh``). Each attempt therefore builds
its process group on a ``PrefixStore`` named after ``TORCHELASTIC_RESTART_COUNT``: fresh keys per
attempt, whatever the agent's setting.
"""
import os
import pickle
import re
import signal
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.constants import default_pg_timeout


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False
    local_world_size: int = 1


def _slurm_master_addr():
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
    m = re.match(r"([^,\[]+)(?:\[(\d+))?", nodes)  # "gpu[03-05,07],cpu1" -> "gpu03"
    return m.group(1) + (m.group(2) or "")


def _url_port(url):
    try:
        return urlparse(url).port if url and "://" in url else None
    except ValueError:
        return None


def init_distributed(backend=None, dist_url=None, rank=None, world_size=None, local_rank=None,
                     local_world_size=None, timeout=None):
    """Set up the process group of this process (if any) and its device; returns ``DistInfo``.

    Explicit ``rank`` and ``world_size`` (legacy flags, ``mp.spawn`` workers) win over the
    environment; then torchrun's variables, then SLURM's; otherwise a single process without a
    process group. ``local_rank`` picks the GPU (``cuda:local_rank % device_count``). ``timeout`` (seconds,
    default torch's) bounds collectives and the rendezvous.
    """
    env = os.environ
    init_method = None
    if rank is not None and world_size is not None:
        init_method = dist_url or "env://"
    elif "RANK" in env and "WORLD_SIZE" in env:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", 1))
        init_method = "env://"
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        rank, world_size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        local_world_size = world_size // int(env.get("SLURM_NNODES", 1))
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        env.setdefault("MASTER_PORT", str(_url_port(dist_url) or 29500))
        init_method = "env://"
    else:
        rank, world_size = 0, 1
    local_rank = local_rank or 0
    cuda = torch.cuda.is_available()
    if cuda:  # modulo: under `srun --gpus-per-task=1` each task sees one GPU, whatever SLURM_LOCALID
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if init_method is not None and not (dist.is_available() and dist.is_initialized()):
        if backend == "nccl" and not cuda:
            warnings.warn("NCCL needs CUDA: using gloo on this CPU machine")
            backend = None
        backend = backend or ("nccl" if cuda else "gloo")
        kwargs = dict(world_size=world_size, rank=rank, device_id=device if backend == "nccl" else None)
        if timeout is not None:
            kwargs["timeout"] = timedelta(seconds=timeout)
        if init_method == "env://" and "TORCHELASTIC_RESTART_COUNT" in env:  # fresh store keys per attempt
            store, _, _ = next(dist.rendezvous(init_method, rank, world_size,
                                               timeout=kwargs.get("timeout", default_pg_timeout)))
            store.set_timeout(kwargs.get("timeout", default_pg_timeout))
            kwargs["store"] = dist.PrefixStore(f"ssl_crops/attempt_{env['TORCHELASTIC_RESTART_COUNT']}/", store)
        else:
            kwargs["init_method"] = init_method
        dist.init_process_group(backend, **kwargs)
    return DistInfo(rank, world_size, local_rank, device, dist.is_available() and dist.is_initialized(),
                    local_world_size or min(world_size, max(1, torch.cuda.device_count())))


@dataclass(frozen=True)
class LaunchSettings:
    """How :func:`launch` starts the job: the original MoCo flags and ``--dist-timeout``."""
    multiprocessing_distributed: bool = False
    dist_url: str | None = None
    world_size: int = 1  # nodes (legacy launch)
    rank: int = 0  # node rank (legacy launch)
    gpu: int | None = None
    backend: str | None = None
    timeout_s: float | None = None

    @classmethod
    def of(cls, args) -> "LaunchSettings":
        """The settings of a parsed command line (attributes missing from ``args``: defaults)."""
        minutes = getattr(args, "dist_timeout", None)
        return cls(bool(getattr(args, "multiprocessing_distributed", False)), getattr(args, "dist_url", None),
                   max(1, getattr(args, "world_size", 1)), max(0, getattr(args, "rank", 0)), getattr(args, "gpu", None),
                   getattr(args, "dist_backend", None), None if minutes is None else minutes * 60)


def _run(worker_fn, info, args):
    try:
        return worker_fn(info, args)
    finally:
        cleanup()


def _spawn_worker(local_rank, worker_fn, args, how, nprocs, world_size):
    info = init_distributed(how.backend, how.dist_url, rank=how.rank * nprocs + local_rank, world_size=world_size,
                            local_rank=local_rank, local_world_size=nprocs, timeout=how.timeout_s)
    return _run(worker_fn, info, args)


@contextmanager
def _parent_outlives_stop_signals():
    """While ``mp.spawn``'s parent waits, a stop signal to the whole job (SLURM, ``timeout``) is
    the ranks' to handle: the parent notes it instead of dying, which would SIGINT the ranks
    (their death signal) while they save."""
    def note(signum, frame):
        print(f"{signal.Signals(signum).name}: waiting for the processes to save and stop", flush=True)

    names = ("SIGTERM", "SIGUSR1", "SIGINT")
    previous = {sig: signal.signal(sig, note) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch(worker_fn, args):
    """Run ``worker_fn(info, args)`` in every process of the job (see the module docstring).

    The launch reads :class:`LaunchSettings` from ``args`` (``multiprocessing_distributed``,
    ``dist_url``, ``world_size``, ``rank``, ``gpu``, ``dist_backend``: the original MoCo flags,
    and ``dist_timeout`` in minutes); ``args`` itself goes to the worker unchanged.
    Returns the worker's result when it runs in this process.
    """
    how = LaunchSettings.of(args)
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    slurm = "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1
    if torchrun or (slurm and not how.multiprocessing_distributed):
        if how.multiprocessing_distributed:
            print("launched by torchrun: ignoring --multiprocessing-distributed", flush=True)
        return _run(worker_fn, init_distributed(how.backend, how.dist_url, timeout=how.timeout_s), args)
    if how.multiprocessing_distributed:
        nprocs = torch.cuda.device_count()
        if nprocs == 0:
            print("--multiprocessing-distributed: no CUDA device, running one process per node "
                  "with the gloo backend", flush=True)
            nprocs = 1
        if nprocs == 1:
            return _spawn_worker(0, worker_fn, args, how, 1, how.world_size)
        with _parent_outlives_stop_signals():
            mp.spawn(_spawn_worker, nprocs=nprocs, args=(worker_fn, args, how, nprocs, how.world_size * nprocs))
        return None
    if how.world_size > 1:
        info = init_distributed(how.backend, how.dist_url, rank=how.rank, world_size=how.world_size,  # one a node
                                local_rank=how.gpu, local_world_size=1, timeout=how.timeout_s)
    else:
        info = init_distributed(how.backend, local_rank=how.gpu)
    return _run(worker_fn, info, args)


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a process group."""
    return get_rank(), get_world_size()


def is_main_process():
    return get_rank() == 0


def print0(*args, **kwargs):
    """``print`` (flushed) in the rank-0 process only: the one place that decides who talks."""
    if is_main_process():
        print(*args, flush=True, **kwargs)


# --------------------------------------------------------------------------- collectives
# The only module that calls torch.distributed collectives (tests/test_distributed.py checks it).
# Each function moves its tensors to the backend's device (CUDA for NCCL, which takes nothing
# else; the CPU for gloo) and returns results on the caller's device. With
# SSL_CROPS_CUDA_COLLECTIVES=1, gloo collectives run on CUDA tensors too and every collective
# asserts it hands torch.distributed CUDA tensors only: NCCL's rule, checkable with two ranks on
# one GPU (benchmarks/gpu_smoke.py).
CUDA_COLLECTIVES_ENV = "SSL_CROPS_CUDA_COLLECTIVES"


def _cuda_collectives():
    return os.environ.get(CUDA_COLLECTIVES_ENV, "") not in ("", "0")


def backend_device():
    """The device whose tensors the process group's collectives take."""
    if dist.get_backend() == "nccl" or _cuda_collectives():
        if not torch.cuda.is_available():
            raise RuntimeError(f"{CUDA_COLLECTIVES_ENV}=1 or NCCL without CUDA")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _on_backend(tensor):
    device = backend_device()
    # non-blocking only towards CUDA (stream-ordered); a device-to-host copy must finish before gloo reads it
    t = tensor.to(device, non_blocking=device.type == "cuda")
    if _cuda_collectives() and not t.is_cuda:
        raise AssertionError(f"collective on a {t.device} tensor: NCCL takes CUDA tensors only")
    return t


def barrier():
    if get_world_size() > 1:
        dist.barrier()


LONG_WAIT_S = 24 * 3600  # rank 0's one-off work the others wait for: caching a folder's proposals


@contextmanager
def rank0_first(timeout_s: float = LONG_WAIT_S):
    """The block's work is rank 0's (it tests :func:`is_main_process`); the other ranks wait at
    its end for up to ``timeout_s``, not ``--dist-timeout``: the wait runs in a gloo group of its
    own (CPU-side, an NCCL job's GPU streams untouched), made by every rank before the block."""
    if get_world_size() == 1:
        yield
        return
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield
        dist.barrier(group=group)
    finally:
        dist.destroy_process_group(group)


@torch.no_grad()
def all_gather_cat(tensor):
    """Concatenate ``tensor`` (same shape on every rank) over ranks along dim 0, on its device;
    no gradient. One ``all_gather_into_tensor``, no list of copies to concatenate."""
    world = get_world_size()
    if world == 1:
        return tensor
    t = _on_backend(tensor.contiguous())
    out = t.new_empty((world * t.shape[0], *t.shape[1:]))
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, t)  # newer torch renames it
    return out.to(tensor.device)


@torch.no_grad()
def broadcast_(tensor, src=0):
    """Overwrite ``tensor`` (in place, on every rank) with rank ``src``'s; returns it."""
    if get_world_size() > 1:
        t = _on_backend(tensor)
        if t is tensor and not tensor.is_contiguous():
            t = tensor.contiguous()
        dist.broadcast(t, src)
        if t is not tensor:
            tensor.copy_(t)
    return tensor


def broadcast_buffers(module, src=0):
    """Rank ``src``'s buffers (BatchNorm statistics, the queue) on every rank."""
    for buf in module.buffers():
        broadcast_(buf, src)


class AnyPending:
    """The result of :func:`any_async`: ``result()`` waits for it (by then usually long done)."""

    def __init__(self, value, work=None, event=None):
        self.value, self.work, self.event = value, work, event

    def result(self):
        if self.work is not None:
            self.work.wait()
        if self.event is not None:
            self.event.synchronize()
        return bool(self.value.item()) if isinstance(self.value, torch.Tensor) else self.value


def any_async(flag):
    """Start agreeing on ``any(flag over ranks)`` without waiting; returns an :class:`AnyPending`.

    On CUDA the flag goes up from pinned memory and comes back into pinned memory behind an
    event, so neither the start nor a ``result()`` a step or two later stalls the GPU."""
    if get_world_size() == 1:
        return AnyPending(bool(flag))
    device = backend_device()
    host = torch.tensor([int(bool(flag))], dtype=torch.int32, pin_memory=device.type == "cuda")
    t = _on_backend(host)
    work = dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True)
    if device.type != "cuda":
        return AnyPending(t, work)
    work.wait()  # makes the current stream wait for the collective; the host does not wait
    out = torch.empty(1, dtype=host.dtype, pin_memory=True)
    out.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return AnyPending(out, event=event)


def _to_bytes(obj):
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)


def all_gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects), through backend tensors."""
    world = get_world_size()
    if world == 1:
        return [obj]
    data = _to_bytes(obj)
    sizes = all_gather_cat(torch.tensor([len(data)])).tolist()
    padded = torch.zeros(max(sizes), dtype=torch.uint8)
    padded[:len(data)] = data
    gathered = all_gather_cat(padded.view(1, -1))
    return [pickle.loads(gathered[r, :n].numpy().tobytes()) for r, n in enumerate(sizes)]


def broadcast_object(obj, src=0):
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if get_world_size() == 1:
        return obj
    data = _to_bytes(obj) if get_rank() == src else torch.zeros(0, dtype=torch.uint8)
    size = broadcast_(torch.tensor([len(data)]), src)
    buf = data if get_rank() == src else torch.zeros(int(size), dtype=torch.uint8)
    return pickle.loads(broadcast_(buf, src).numpy().tobytes())


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
