"""The real engine: a Llama-family model in plain PyTorch on one GPU.

Pieces: `model` (decoder), `weights` (Hugging Face checkpoints), `kv_cache` (one paged KV
pool for both phases), `attention` (Triton kernels on CUDA, a PyTorch reference on CPU),
`partitions` (green-context SM splits), `graphs` (decode CUDA graphs per partition),
`model_runner` (one step of a packed batch) and `gpu_info` (NVML facts and sampling).

Importing this package imports no torch; its modules do.
"""
