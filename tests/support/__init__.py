"""What the tests build on: crafted and hostile files, fake readers and image trees, the CuPy
stand-in, the PyTorch twins, the sandbox that reads a file in a capped child process, and the
script mpirun runs.  Imported as ``support.<module>`` (tests/ is on the path under pytest)."""
