"""`plad` with accelerate's FSDP path on CPU processes, for tests/train/test_fsdp.py:
`accelerate launch --config_file configs/accelerate/fsdp.yaml tests/fsdp_on_cpu.py ARGS` runs `plad ARGS`.

accelerate chooses FSDP only on accelerator devices: on CPU processes (ACCELERATE_USE_CPU) its state says
MULTI_CPU and prepare() wraps the model in DDP, whatever the config file says (accelerate/state.py, 1.15). PyTorch's
FSDP2 (fully_shard) itself runs on CPU tensors over gloo. This script sets the state accelerate would set on GPUs,
distributed_type FSDP with the plugin read from the launcher's FSDP_* variables (which come from the config file),
and nothing else: from then on accelerate's own FSDP code prepares, steps, gathers and saves, as on GPUs."""

from __future__ import annotations

import os
import sys

import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, **kwargs) -> None:
    _init(self, *args, **kwargs)
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = FullyShardedDataParallelPlugin()  # its settings: the FSDP_* environment variables
        if self._mixed_precision != "no":  # as accelerate's state does under FSDP
            self.fsdp_plugin.set_mixed_precision(self._mixed_precision)


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from plad.cli import main

    sys.exit(main(sys.argv[1:]))
