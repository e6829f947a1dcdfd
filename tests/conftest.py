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

import pytest

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # imported before this file (by a plugin): the variable came too late for it
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def subprocess_tmpdir(tmp_path_factory):
    """Point the temporary folder of every process a test starts into pytest's basetemp.

    torchrun leaves an empty ``torchelastic_*`` folder in the temporary folder on every launch, and the suite
    launches dozens; pytest keeps only its last three basetemps, so these go with them. This process's own
    ``tempfile`` has read TMPDIR already (pytest's basetemp came from it), so only the processes it starts move.
    """
    folder = tmp_path_factory.mktemp("subprocess-tmp")
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved
