"""Process-group setup and small collectives, in one place (DINO ``utils`` style).

Launch modes, in order of precedence (see ``launch``):
1. ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment, ``env://``);
2. the original MoCo flags ``--multiprocessing-distributed`` and/or ``--world-size N`` (nodes),
   ``--rank R`` (this node; under ``srun`` ``SLURM_NODEID`` when not given), ``--dist-url``
   (default: a free port on one node, ``tcp://<first node of the step>:<port from the job id>``
   under ``srun``): one process per GPU via ``mp.spawn`` (one process per node with gloo on
   machines without CUDA), or one process per node without ``--multiprocessing-distributed``.
   ``--batch-size`` and ``-j`` are then per node, as in the official code;
3. an ``srun`` step of several tasks, one process per task (``SLURM_PROCID`` ...; the master is
   the first node of the step's ``SLURM_STEP_NODELIST`` unless ``MASTER_ADDR`` is set, the port
   ``MASTER_PORT``, ``--dist-url``'s or one derived from the job id);
4. a plain single process on one GPU (``--gpu``) or the CPU; SLURM's batch step (an sbatch
   script without ``srun``, where ``SLURM_NTASKS`` counts tasks that never start) is one too,
   with a printed line naming ``srun`` (``ssl_crops.slurm``).
NCCL is used with CUDA, gloo otherwise.

One failing rank ends the job within seconds, however launched: its exception goes to the group's
store, which every other rank polls (``FAILURE_POLL_S``); they print which rank failed and why and
exit 1 (2 for a user mistake), even when blocked in an NCCL collective (``--dist-timeout``).

Elastic restarts (``torchrun --max-restarts N``): the agent's rendezvous store is shared between
attempts and still holds the failed attempt's keys (gloo's peer addresses among them: a new
worker reading a dead peer's hangs in ``connectFullMesh``), so each attempt builds its process
group on a ``PrefixStore`` named after ``TORCHELASTIC_RESTART_COUNT``.
"""
import os
import pickle
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.constants import default_pg_timeout

from . import rendezvous, slurm
from .rendezvous import FailureWatch


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False
    local_world_size: int = 1
    launcher: str = "single"  # "single", "torchrun", "srun", "spawn" or "node" (the last two: the original flags)

    @property
    def per_node_flags(self) -> bool:
        """The original MoCo flags launched this process: ``--batch-size`` and ``-j`` are per node."""
        return self.launcher in ("spawn", "node")

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


_watch = None  # the FailureWatch of this process's group


class LaunchError(ValueError):
    """The flags and the environment describe no launch that can work (one ``error:`` line)."""


def init_distributed(backend=None, dist_url=None, rank=None, world_size=None, local_rank=None,
                     local_world_size=None, timeout=None, launcher=None):
    """Set up the process group of this process (if any) and its device; returns ``DistInfo``.

    Explicit ``rank`` and ``world_size`` (legacy flags, ``mp.spawn`` workers) win over the
    environment; then torchrun's variables, then those of an ``srun`` step of several tasks;
    otherwise a single process without a process group. ``local_rank`` picks the GPU
    (``cuda:local_rank % device_count``). ``timeout`` (seconds, default torch's) bounds
    collectives and the rendezvous.
    """
    global _watch
    env = os.environ
    init_method = None
    step = slurm.slurm_step(env)
    if rank is not None and world_size is not None:
        init_method, launcher = dist_url or "env://", launcher or "node"
    elif "RANK" in env and "WORLD_SIZE" in env:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", 1))
        init_method, launcher = "env://", "torchrun"
    elif step is not None and step.ntasks > 1:
        rank, world_size, local_rank, local_world_size = step.rank, step.ntasks, step.local_rank, step.local_tasks
        env.setdefault("MASTER_ADDR", step.master)
        env.setdefault("MASTER_PORT", str(rendezvous.url_port(dist_url) or rendezvous.job_port(step.job_id)))
        init_method, launcher = "env://", "srun"
    else:
        rank, world_size, launcher = 0, 1, "single"
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
        wait = default_pg_timeout if timeout is None else timedelta(seconds=timeout)
        store, _, _ = next(dist.rendezvous(init_method, rank, world_size, timeout=wait))
        store.set_timeout(wait)
        if init_method == "env://" and "TORCHELASTIC_RESTART_COUNT" in env:  # fresh store keys per attempt
            store = dist.PrefixStore(f"ssl_crops/attempt_{env['TORCHELASTIC_RESTART_COUNT']}/", store)
        dist.init_process_group(backend, store=store, world_size=world_size, rank=rank, timeout=wait,
                                device_id=device if backend == "nccl" else None)
        _watch = FailureWatch(store, rank)
    return DistInfo(rank, world_size, local_rank, device, dist.is_available() and dist.is_initialized(),
                    local_world_size or min(world_size, max(1, torch.cuda.device_count())), launcher)


@dataclass(frozen=True)
class LaunchSettings:
    """How :func:`launch` starts the job: the original MoCo flags and ``--dist-timeout``."""
    multiprocessing_distributed: bool = False
    dist_url: str | None = None
    world_size: int | None = None  # nodes (legacy launch); None: not given
    rank: int | None = None  # node rank (legacy launch); None: not given
    gpu: int | None = None
    backend: str | None = None
    timeout_s: float | None = None

    @classmethod
    def of(cls, args) -> "LaunchSettings":
        """The settings of a parsed command line (attributes missing from ``args``: defaults;
        ``--world-size``/``--rank`` below 1/0: not given)."""
        minutes = getattr(args, "dist_timeout", None)
        world, rank = getattr(args, "world_size", -1), getattr(args, "rank", -1)
        world = world if world is not None and world >= 1 else None
        rank = rank if rank is not None and rank >= 0 else None
        return cls(bool(getattr(args, "multiprocessing_distributed", False)), getattr(args, "dist_url", None),
                   world, rank, getattr(args, "gpu", None), getattr(args, "dist_backend", None),
                   None if minutes is None else minutes * 60)

    @property
    def legacy(self) -> bool:
        return self.multiprocessing_distributed or (self.world_size or 1) > 1


def legacy_node(how: LaunchSettings, step=None) -> tuple[int, int, str]:
    """``(nodes, this node's rank, rendezvous URL)`` of a launch by the original flags; ``step``:
    the ``srun`` step (``slurm.slurm_step``) or ``None``. Raises :class:`LaunchError`."""
    nodes = how.world_size or (step.nnodes if step is not None else 1)
    if step is not None and step.local_tasks > 1 and how.multiprocessing_distributed:
        raise LaunchError(f"srun started {step.local_tasks} tasks on this node and --multiprocessing-distributed "
                          "spawns a process per GPU in each: use srun --ntasks-per-node 1 with these flags, or one "
                          "srun task per GPU without them")
    if how.rank is not None:
        node = how.rank
    elif nodes == 1:
        node = 0
    elif step is not None:
        if step.nnodes != nodes:
            raise LaunchError(f"--world-size {nodes} (nodes) but this srun step runs on {step.nnodes} node(s): "
                              "give --rank, or match --world-size to the step")
        node = step.node
    else:
        raise LaunchError(f"--world-size {nodes} (nodes) needs --rank, this node's index (0..{nodes - 1}); "
                          "under srun it is taken from SLURM_NODEID")
    if not 0 <= node < nodes:
        raise LaunchError(f"--rank {node} is not a node index of --world-size {nodes} (0..{nodes - 1})")
    if how.dist_url:
        url = how.dist_url
    elif nodes == 1:
        url = f"tcp://127.0.0.1:{rendezvous.free_port()}"
    elif step is not None:
        url = f"tcp://{step.master}:{rendezvous.job_port(step.job_id)}"
    else:
        raise LaunchError(f"--world-size {nodes} (nodes) needs --dist-url tcp://MASTER:PORT (the first node's)")
    return nodes, node, url


def _run(worker_fn, info, args, user_errors=(), prog="error"):
    try:
        result = worker_fn(info, args)
    except BaseException as e:
        mistake = isinstance(e, user_errors)
        if _watch is not None and info.world_size > 1:  # the others end within seconds, naming this rank and its error
            print(f"{prog}: error: {e}" if mistake else f"rank {info.rank} failed: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
            _watch.report(e, code=2 if mistake else 1)
        if dist.is_initialized() and dist.get_backend() != "nccl":  # NCCL's may wait for the others: exit
            cleanup()
        if mistake and info.world_size > 1:  # said above; exit 2 as the command line's mistakes
            raise SystemExit(2) from None
        raise
    if _watch is not None:
        _watch.stop()  # before the last barrier: past it another rank may end, and its store with it
    barrier()
    cleanup()
    return result


def _spawn_worker(local_rank, worker_fn, args, how, nprocs, world_size, node, url, user_errors=(), prog="error"):
    info = init_distributed(how.backend, url, rank=node * nprocs + local_rank, world_size=world_size,
                            local_rank=local_rank, local_world_size=nprocs, timeout=how.timeout_s, launcher="spawn")
    return _run(worker_fn, info, args, user_errors, prog)


def launch(worker_fn, args, user_errors=(), prog="error"):
    """Run ``worker_fn(info, args)`` in every process of the job (see the module docstring).

    The launch reads :class:`LaunchSettings` from ``args`` (``multiprocessing_distributed``,
    ``dist_url``, ``world_size``, ``rank``, ``gpu``, ``dist_backend``: the original MoCo flags,
    and ``dist_timeout`` in minutes); ``args`` itself goes to the worker unchanged.
    Returns the worker's result when it runs in this process. A launch that cannot work raises
    :class:`LaunchError` before any process group is made. A worker's ``user_errors`` (the user's
    mistakes) end every rank with exit code 2 and one ``<prog>: error:`` line from the rank that met it.
    """
    how = LaunchSettings.of(args)

    def run(info):
        return _run(worker_fn, info, args, user_errors, prog)

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if how.multiprocessing_distributed:
            print("launched by torchrun: ignoring --multiprocessing-distributed", flush=True)
        return run(init_distributed(how.backend, how.dist_url, timeout=how.timeout_s))
    step = slurm.slurm_step()
    if step is None and slurm.in_batch_step():
        print(f"SLURM batch step (SLURM_NTASKS={os.environ['SLURM_NTASKS']}, no srun step): SLURM's tasks are "
              "ignored here; start one process per task with `srun python ...`", flush=True)
    if how.legacy:
        nodes, node, url = legacy_node(how, step)
        if not how.multiprocessing_distributed:  # one process per node
            return run(init_distributed(how.backend, url, rank=node, world_size=nodes, local_rank=how.gpu,
                                        local_world_size=1, timeout=how.timeout_s, launcher="node"))
        nprocs = torch.cuda.device_count()
        if nprocs == 0:
            print("--multiprocessing-distributed: no CUDA device, one process per node with gloo", flush=True)
            nprocs = 1
        if nprocs == 1:
            return _spawn_worker(0, worker_fn, args, how, 1, nodes, node, url, user_errors, prog)
        try:
            with rendezvous.parent_outlives_stop_signals():
                mp.spawn(_spawn_worker, nprocs=nprocs,
                         args=(worker_fn, args, how, nprocs, nodes * nprocs, node, url, user_errors, prog))
        except mp.ProcessExitedException as e:  # exit code 2: a user mistake, said by the rank that met it
            raise (SystemExit(2) if e.exit_code == 2 else e) from None
        return None
    if step is not None and step.ntasks > 1:
        return run(init_distributed(how.backend, how.dist_url, timeout=how.timeout_s))
    return run(init_distributed(how.backend, local_rank=how.gpu))


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
def all_to_all_rows(tensor, send_counts, recv_counts):
    """Rows of ``tensor`` sent in consecutive blocks, ``send_counts[r]`` rows to rank ``r``;
    returns the rows received, ``recv_counts[r]`` from rank ``r`` in rank order, on the caller's
    device. The counts are host ints (no sync)."""
    if get_world_size() == 1:
        return tensor
    t = _on_backend(tensor.contiguous())
    out = t.new_empty((sum(recv_counts), *t.shape[1:]))
    dist.all_to_all_single(out, t, list(recv_counts), list(send_counts))
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
    global _watch
    if _watch is not None:
        _watch.stop()
        _watch = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
