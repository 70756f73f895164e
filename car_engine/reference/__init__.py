"""The plain way of doing each thing, which tests and benchmarks compare the engine with.

One module per engine module it checks: ``select`` (the native selection routines),
``near_dup`` and ``semdedup`` (duplicates beyond exact content),
``ifd``, ``iqs``, ``embed`` and ``cluster``. The PyTorch twin of the Triton kernel is not
here: it is a production path and lives beside the kernel, in ``kernels/``.
"""
