"""The trainer under mpirun, with one rank made to misbehave at step 3: the MPI tests run

    mpirun -n 2 python tests/support/mpi_job.py SCENARIO TRAIN_ARGS...

SCENARIO is one of
    train           python -m minimlp.train TRAIN_ARGS, unchanged
    stop-after-1    train, stopping (resumably) after the first epoch
    error           rank 1 raises a ValueError (the trainer reports it and aborts the job)
    crash           rank 1 raises a RuntimeError nobody catches (the excepthook aborts the job)
    kill            rank 1 is killed with SIGKILL (mpirun notices and ends the job)
    hang            rank 1 stops answering (the watchdog of rank 0 aborts the job)
    drift           rank 1 changes one of its parameters (the replica check stops every rank)
"""

from __future__ import annotations

import os
import signal
import sys
import time

from minimlp import train
from minimlp.parallel import ddp, mpi


def misbehave(scenario: str) -> None:
    original = ddp.DistributedDataParallel.train_step

    def train_step(self, x, labels, smoothing, step):
        if step == 2 and mpi.world().rank == 1:
            if scenario == "error":
                raise ValueError("a deliberate error on rank 1")
            if scenario == "crash":
                raise RuntimeError("a deliberate crash on rank 1")
            if scenario == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if scenario == "hang":
                time.sleep(600)
            if scenario == "drift":
                self.model.store.flat_params[0] += 1e-3
        return original(self, x, labels, smoothing, step)

    ddp.DistributedDataParallel.train_step = train_step


def main() -> int:
    scenario, argv = sys.argv[1], sys.argv[2:]
    if scenario == "stop-after-1":
        result = train.run(argv, on_epoch_end=lambda record: True)
        return 0 if result.status == "interrupted" else 1
    if scenario != "train":
        misbehave(scenario)
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
