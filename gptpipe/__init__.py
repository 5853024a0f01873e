import logging

# torchao's wheel carries CUDA-only kernels (mxfp8, Hopper cutlass) whose loading fails, harmlessly, on a
# CPU build of torch, and registers enums torch now handles itself: each prints a warning whenever anything
# imports torchao (transformers does). Keep stage logs to what matters.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
