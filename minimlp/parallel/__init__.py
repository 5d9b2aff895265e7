"""Data parallelism: one batch split over several processes, their gradients summed.

* :mod:`~minimlp.parallel.sharding`: how a batch is split and its shards' gradients weighted
  (shared by both kinds below);
* :mod:`~minimlp.parallel.workers`: worker processes on one machine (``--procs``);
* :mod:`~minimlp.parallel.mpi`: the MPI job (``mpirun``): ranks, collectives, start-up checks, failure;
* :mod:`~minimlp.parallel.ddp`: data-parallel training over MPI ranks (MPI sums on CPUs, NCCL on GPUs).
"""
