"""SLURM's environment in each case a job meets: the batch step, `srun -n 8`,
`srun --ntasks-per-node`, `--gpus-per-task=1`."""
import pytest

from ssl_crops import slurm

# what SLURM sets (a subset) in the sbatch script of `sbatch --nodes 2 --ntasks-per-node 4`
BATCH = {"SLURM_JOB_ID": "4711", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
         "SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_NTASKS_PER_NODE": "4",
         "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NODELIST": "gpu[01-02]"}


def _task(rank, local, node, step_tasks, per_node, nodes, step_nodes="gpu[01-02]", **extra):
    """One task of an srun step inside BATCH's job."""
    return {**BATCH, "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local),
            "SLURM_NODEID": str(node), "SLURM_NTASKS": str(step_tasks), "SLURM_STEP_NUM_TASKS": str(step_tasks),
            "SLURM_STEP_TASKS_PER_NODE": per_node, "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_STEP_NODELIST": step_nodes, **extra}


@pytest.mark.parametrize("step", [None, "4294967291", "4294967294", "batch"])  # no id; batch ids of new/old SLURM
def test_the_batch_step_is_no_launch(step):
    env = dict(BATCH, **({} if step is None else {"SLURM_STEP_ID": step}))
    assert slurm.in_batch_step(env) and slurm.slurm_step(env) is None


def test_a_single_task_job_is_no_batch_step_launch():
    assert not slurm.in_batch_step({**BATCH, "SLURM_NTASKS": "1"}) and not slurm.in_batch_step({})


def test_srun_n8_over_two_nodes():
    step = slurm.slurm_step(_task(5, 1, 1, 8, "4(x2)", 2))
    assert (step.rank, step.ntasks, step.local_rank, step.node, step.nnodes, step.local_tasks) == (5, 8, 1, 1, 2, 4)
    assert step.master == "gpu01" and not slurm.in_batch_step(_task(5, 1, 1, 8, "4(x2)", 2))


def test_a_step_on_part_of_the_job_takes_its_own_nodes_and_tasks():
    """`srun --nodes 1 --ntasks-per-node 2` in a job of 2 nodes x 4: the step's variables win."""
    env = _task(1, 1, 0, 2, "2", 1, step_nodes="gpu02")
    step = slurm.slurm_step(env)
    assert (step.ntasks, step.nnodes, step.local_tasks, step.master) == (2, 1, 2, "gpu02")


def test_uneven_tasks_per_node():
    """`srun -n 8 --ntasks-per-node 3` over 3 nodes: 3, 3 and 2 tasks."""
    env = _task(7, 1, 2, 8, "3(x2),2", 3, step_nodes="n[1-3]")
    assert slurm.slurm_step(env).local_tasks == 2
    assert slurm.tasks_per_node("3(x2),2") == [3, 3, 2] and slurm.tasks_per_node("8") == [8]
    with pytest.raises(ValueError, match="tasks-per-node"):
        slurm.tasks_per_node("2(x")


def test_gpus_per_task_and_cpus_per_task():
    """`srun --gpus-per-task=1 --cpus-per-task 12`: the task's own CPUs (CUDA_VISIBLE_DEVICES is
    the GPU's: tests/test_distributed.py's device-ordinal test)."""
    env = _task(3, 3, 0, 8, "4(x2)", 2, SLURM_CPUS_PER_TASK="12", CUDA_VISIBLE_DEVICES="3")
    assert slurm.cpus_of_task(env) == 12 and slurm.slurm_step(env).local_rank == 3
    assert slurm.cpus_of_task({**BATCH, "SLURM_CPUS_PER_TASK": "12"}) is None  # the batch step's are the job's


@pytest.mark.parametrize("nodelist,addr", [("gpu[03-05,07],cpu1", "gpu03"), ("node7", "node7"),
                                           ("a-1,b-2", "a-1"), ("n[12]", "n12")])
def test_first_host(nodelist, addr):
    assert slurm.first_host(nodelist) == addr
