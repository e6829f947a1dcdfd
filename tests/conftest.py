"""Suite-wide settings.

The suite asserts fp32 numerics wherever a test does not name a precision. ``precision="auto"`` picks bf16
on CPUs with native bf16 (AVX512-BF16 / AMX), so on such a host (a GPU machine's Xeon, for one) those tests
would compare bf16 against fp32. Capping oneDNN below its bf16 kernels, for this process and the CLI
subprocesses it starts, makes auto mean fp32 everywhere; the bf16 branch of auto is tested on its own
(tests/test_fuse.py monkeypatches the CPU probe). On CPUs without those units the cap changes nothing.
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
