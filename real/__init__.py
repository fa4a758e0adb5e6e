"""The real engine: a Llama-family model in plain PyTorch on one GPU.

Pieces: `model` (decoder), `weights` (Hugging Face checkpoints), `kv_cache` (one paged KV
pool for both phases), `attention` (Triton kernels on CUDA, a PyTorch reference on CPU),
`partitions` (green-context SM splits), `graphs` (decode CUDA graphs per partition),
`model_runner` (one step of a packed batch) and `gpu_info` (NVML facts and sampling).
Serving: `serving` (the engine fed by a server, streaming tokens), `sampler`, `tokenizer`,
`openai_protocol` (request parsing, error bodies), `serve` (the HTTP server) and `client`
(trace replay against any OpenAI-compatible server).

Importing this package imports no torch; its modules do.
"""
