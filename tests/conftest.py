"""Suite-wide settings.

The suite asserts fp32 numerics wherever a test does not name a precision. ``precision="auto"`` picks bf16
on CPUs with native bf16 (AVX512-BF16 / AMX), so on such a host (a GPU machine's Xeon, for one) those tests
would compare bf16 against fp32. Capping oneDNN below its bf16 kernels, for this process and the CLI
subprocesses it starts, makes auto mean fp32 everywhere; the bf16 branch of auto is tested on its own
(tests/test_fuse.py monkeypatches the CPU probe). On CPUs without those units the cap changes nothing.

``make test`` runs the suite in one pytest-xdist worker per core. Each worker, and the CLI and torchrun processes it
starts, then computes on one thread: a worker's default of one thread per core would put twice as many threads as
cores on the machine, and most of the suite's time is one process's Python and imports, which threads do not share.
"""

import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # imported before this file (by a plugin): the variable came too late for it
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
