"""What SLURM's environment says about this process (torch-free, no package imports).

SLURM sets ``SLURM_PROCID=0`` and the job's ``SLURM_NTASKS`` in the *batch step* too (the
``sbatch`` script itself, one process on the first node), where no other task will ever start:
only an ``srun`` step (``SLURM_STEP_ID`` a step number) is a launch of several tasks. The batch,
extern and interactive steps carry no id or a reserved one (``0xfffffff0`` and up; ``batch``).
A step's own variables (``SLURM_STEP_*``) win over the job's: a step may use part of the job.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["SlurmStep", "cpus_of_task", "first_host", "in_batch_step", "slurm_step", "tasks_per_node"]

RESERVED_STEP_IDS = 0xFFFFFFF0  # SLURM_BATCH_SCRIPT, SLURM_EXTERN_CONT, SLURM_INTERACTIVE_STEP, ... (any version)


def _step_id(env):
    return env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))


def _is_srun_step(env) -> bool:
    sid = _step_id(env)
    return sid is not None and sid.isdigit() and int(sid) < RESERVED_STEP_IDS


def in_batch_step(env=None) -> bool:
    """SLURM's variables say several tasks (``SLURM_PROCID``, ``SLURM_NTASKS`` > 1) but this is
    no ``srun`` step: the batch script (or ``salloc``'s shell), where the other tasks never come."""
    env = os.environ if env is None else env
    return "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1 and not _is_srun_step(env)


def tasks_per_node(spec: str) -> list[int]:
    """``SLURM_TASKS_PER_NODE`` / ``SLURM_STEP_TASKS_PER_NODE`` expanded: ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    out = []
    for part in filter(None, spec.split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise ValueError(f"unreadable SLURM tasks-per-node list {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[03-05,07],cpu1"`` -> ``"gpu03"``."""
    m = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    if m is None:
        raise ValueError(f"unreadable SLURM node list {nodelist!r}")
    return m.group(1) + (m.group(2) or "")


@dataclass(frozen=True)
class SlurmStep:
    """This task of an ``srun`` step."""
    rank: int  # SLURM_PROCID
    ntasks: int  # tasks of the step
    local_rank: int  # SLURM_LOCALID
    node: int  # SLURM_NODEID, the node's index in the step
    nnodes: int
    local_tasks: int  # tasks of the step on this node
    master: str  # first host of the step's node list
    job_id: str


def slurm_step(env=None) -> SlurmStep | None:
    """This task of an ``srun`` step, or ``None`` outside one (no SLURM, the batch step)."""
    env = os.environ if env is None else env
    if "SLURM_PROCID" not in env or not _is_srun_step(env):
        return None
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    node = int(env.get("SLURM_NODEID", 0))
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    per_node = tasks_per_node(spec) if spec else []
    nnodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or len(per_node) or 1)
    if node < len(per_node):
        local = per_node[node]
    else:  # no list: an even spread
        local = int(env.get("SLURM_NTASKS_PER_NODE") or 0) or max(1, ntasks // nnodes)
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    return SlurmStep(int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", 0)), node, nnodes, local,
                     first_host(nodes) if nodes else "127.0.0.1", env.get("SLURM_JOB_ID", ""))


def cpus_of_task(env=None) -> int | None:
    """CPUs SLURM gave this task of an ``srun`` step (``SLURM_CPUS_PER_TASK``), ``None`` if unsaid."""
    env = os.environ if env is None else env
    value = env.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and _is_srun_step(env) else None
