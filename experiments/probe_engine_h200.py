"""One-off probes of the engine's kernels on a GPU, one section per argument (results of this
round: experiments/results/engine_probes_h200.json):

    OUT=probe_out python3 experiments/probe_engine_h200.py a b c d e

a: the dense layers' matrix products at 16-128 rows under cuBLAS, cuBLASLt and a plain Triton
   split-K kernel (written here only to compare; none beat the better library by much);
b: prefill attention tile settings at 2k after 8k, 2k and 8k tokens;
c: host against GPU time of back-to-back steps, with events marked where a graph step's own
   work starts (the measurement `ModelRunner.timing_steps` now makes);
d: PyTorch's scaled_dot_product_attention backends on the same prefill shapes (dense K/V);
e: decode attention under other work-list sizes and long-context limits.
Sections patch module attributes for their variants and restore them; they are probes, not
benchmarks of record.
"""
import json, statistics, sys, time, os
from pathlib import Path
import torch, triton, triton.language as tl
sys.path.insert(0, "experiments")
OUT = Path(os.environ.get("OUT", "/tmp/out")); OUT.mkdir(parents=True, exist_ok=True)
res = {}
def save(): (OUT / "diag.json").write_text(json.dumps(res, indent=1))
dev = "cuda"; bf = torch.bfloat16
from bench_real_roofline import copy_bandwidth
bw = copy_bandwidth(10)["bytes_per_s"]; res["copy_bw"] = bw; print("bw", bw / 1e12, flush=True)

def graph_ms(fn, reps=15):
    fn(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3): g.replay()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); g.replay(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
    del g
    return statistics.median(ts)

@triton.jit
def skinny(x_ptr, w_ptr, y_ptr, part_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_n = tl.program_id(0); pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M); rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N); rk = tl.arange(0, BLOCK_K)
    k_per = K // SPLIT_K
    k0 = pid_k * k_per
    xp = x_ptr + rm[:, None] * K + (k0 + rk)[None, :]
    wp = w_ptr + rn[:, None].to(tl.int64) * K + (k0 + rk)[None, :]
    mm = rm < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, k_per, BLOCK_K):
        x = tl.load(xp, mask=mm[:, None], other=0.0)
        w = tl.load(wp)
        acc = tl.dot(x, tl.trans(w), acc)
        xp += BLOCK_K; wp += BLOCK_K
    if SPLIT_K == 1:
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mm[:, None])
    else:
        tl.store(part_ptr + (pid_k * BLOCK_M + rm[:, None]) * N + rn[None, :], acc)

@triton.jit
def reduce_k(part_ptr, y_ptr, M, N, BLOCK_M: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    m = i // N; n = i % N
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(part_ptr + (s * BLOCK_M + m) * N + n, mask=m < M, other=0.0)
    tl.store(y_ptr + i, acc.to(y_ptr.dtype.element_ty), mask=i < M * N)

def run_skinny(x, w, y, part, cfg):
    M, K = x.shape; N = w.shape[0]
    bm = max(16, triton.next_power_of_2(M))
    bn, bk, st, nw, sk = cfg
    skinny[(N // bn, sk)](x, w, y, part, M, N, K, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk,
                          num_stages=st, num_warps=nw)
    if sk > 1:
        reduce_k[(triton.cdiv(M * N, 1024),)](part, y, M, N, BLOCK_M=bm, SPLIT_K=sk, BLOCK=1024, num_warps=4)

def section_a():
    shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
    L = 32
    ws = {k: [torch.randn(n, kk, device=dev, dtype=bf) * 0.02 for _ in range(L)] for k, (n, kk) in shapes.items()}
    part = torch.empty(4 * 128 * 28672, device=dev, dtype=torch.float32)
    out = []
    cfgs = [(bn, bk, st, 4, sk) for bn in (64, 128) for bk in (128,) for st in (4,) for sk in (1, 2, 4)]
    cfgs += [(64, 256, 3, 4, 1), (64, 256, 3, 4, 2), (128, 64, 6, 4, 1), (32, 256, 4, 4, 1), (128, 128, 4, 8, 1)]
    for M in (16, 32, 64, 128):
        row = {"M": M}
        for name, (n, k) in shapes.items():
            x = torch.randn(M, k, device=dev, dtype=bf); y = torch.empty(M, n, device=dev, dtype=bf)
            layer_bytes = L * n * k * 2
            ref = x @ ws[name][0].t()
            r = {}
            for lib in ("cublas", "cublaslt"):
                torch.backends.cuda.preferred_blas_library(lib)
                t = graph_ms(lambda: [torch.matmul(x, w.t()) for w in ws[name]])
                r[lib] = round(layer_bytes / bw / (t / 1e3), 4)
            torch.backends.cuda.preferred_blas_library("default")
            best = None
            for cfg in cfgs:
                try:
                    run_skinny(x, ws[name][0], y, part, cfg); torch.cuda.synchronize()
                    err = (y.float() - ref.float()).abs().max().item()
                    if err > 0.05 * ref.float().abs().max().item() + 1e-2:
                        r[str(cfg)] = f"wrong {err}"; continue
                    t = graph_ms(lambda: [run_skinny(x, w, y, part, cfg) for w in ws[name]])
                    f = layer_bytes / bw / (t / 1e3)
                    r[str(cfg)] = round(f, 4)
                    if best is None or f > best[1]: best = (cfg, f)
                except Exception as e:
                    r[str(cfg)] = f"fail {type(e).__name__}"
            r["best"] = [list(best[0]), round(best[1], 4)] if best else None
            row[name] = r
            print(M, name, "cublas", r["cublas"], "lt", r["cublaslt"], "triton best", r["best"], flush=True)
        out.append(row)
        res["gemm"] = out; save()
    ws.clear(); torch.cuda.empty_cache()

def section_b():
    from real import attention
    from real.batch import Chunk, pack
    nb = 2000
    kc = torch.randn(nb, 16, 8, 128, device=dev, dtype=bf); vc = torch.randn_like(kc)
    out = []
    for chunk, prior in ((2048, 8192), (2048, 0), (8192, 0)):
        table = list(range(-(-(chunk + prior) // 16)))
        p = pack([Chunk(list(range(chunk)), prior, table)], torch.device(dev), 16, 8, 132, nb)
        q = torch.randn(chunk, 32, 128, device=dev, dtype=bf)
        flops = 4 * 32 * 128 * sum(prior + i + 1 for i in range(chunk))
        o = torch.empty_like(q)
        base = dict(attention.PREFILL_CONFIG)
        for bm, bn, nw, st in [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3),
                               (64, 128, 4, 3), (128, 64, 4, 3), (128, 32, 4, 4), (128, 128, 4, 2)]:
            attention.PREFILL_CONFIG = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=nw, num_stages=st)
            try:
                f = lambda: attention._prefill_triton(q, kc, vc, p.meta, 0.088, o, range(1), chunk)
                t = graph_ms(lambda: [f() for _ in range(8)]) / 8
                r = {"chunk": chunk, "prior": prior, "cfg": [bm, bn, nw, st], "ms": t, "tflops": flops / t / 1e9}
            except Exception as e:
                r = {"chunk": chunk, "prior": prior, "cfg": [bm, bn, nw, st], "fail": type(e).__name__}
            print(r, flush=True); out.append(r)
        attention.PREFILL_CONFIG = base
    res["prefill_attention"] = out; save()
    kc = vc = None; torch.cuda.empty_cache()

def section_c():
    from bench_real_roofline import Shapes, time_step, _sleep_cycles_per_ms
    from real.model_runner import ModelRunner
    from real.partitions import Partitions
    from real.graphs import StepGraphs
    from nexus.specs import MODELS
    from real.gpu_info import ClockPowerSampler
    from nexus.cost.base import FULL_GPU
    parts = Partitions([64], device="cuda"); full = parts.decode(FULL_GPU)
    runner = ModelRunner(MODELS["llama-3.1-8b"], device="cuda", max_model_len=16448, max_decode_batch=256, max_batch_tokens=8448)
    runner.kv.data.normal_()
    runner.capture_graphs([full]); runner.capture_prefill_graphs([full])
    cyc = _sleep_cycles_per_ms()
    marks = {}
    orig = StepGraphs._replay
    def marked(self, graph, hidden, rows, upload):
        marks["b"] = torch.cuda.Event(enable_timing=True); marks["b"].record()
        marks["tb"] = time.perf_counter()
        out = orig(self, graph, hidden, rows, upload)
        marks["d"] = torch.cuda.Event(enable_timing=True); marks["d"].record()
        return out
    sh = Shapes(runner, {"full": {"copy_bytes_per_s": bw, "matmul_flops_per_s": 7.5e14}}, 25, cyc)
    out = []
    def consecutive(batch):
        StepGraphs._replay = marked
        try:
            for _ in range(3): runner.step(batch, full)
            rows = []
            with ClockPowerSampler() as clk:
                for _ in range(25):
                    a = torch.cuda.Event(enable_timing=True); c = torch.cuda.Event(enable_timing=True)
                    a.record(); t0 = time.perf_counter()
                    runner.step(batch, full)
                    t1 = time.perf_counter(); c.record(); c.synchronize()
                    rows.append({"wall": (t1 - t0) * 1e3, "pre_host": (marks["tb"] - t0) * 1e3,
                                 "pre": a.elapsed_time(marks["b"]), "busy": marks["b"].elapsed_time(marks["d"]),
                                 "post": marks["d"].elapsed_time(c)})
        finally:
            StepGraphs._replay = orig
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        med["clock"] = clk.summary()
        med["busy_series"] = [round(r["busy"], 3) for r in rows]
        return med
    orig_time_step = time_step
    for kind, a, b in [("decode", 64, 1024), ("decode", 256, 1024), ("mixed", 256, 32), ("mixed", 512, 32),
                       ("mixed", 1024, 32), ("mixed", 2048, 32), ("mixed", 1024, 256), ("prefill", 2048, 0)]:
        got = {}
        import bench_real_roofline as brr
        def capture_ts(r, b_, p_, reps, cyc_):
            got["batch"] = b_
            return orig_time_step(r, b_, p_, reps, cyc_)
        brr.time_step = capture_ts
        getattr(sh, kind)(a, b, full) if kind != "decode" else sh.decode(a, b, full)
        brr.time_step = orig_time_step
        row = sh.rows[-1]
        c = consecutive(got["batch"])
        r = {"kind": kind, "shape": [a, b], "bench_time_ms": row["time_ms"], "bench_wall_ms": row["wall_ms"],
             "bench_rested": row["time_ms_rested"], "bench_host_fraction": row["host_fraction"], "consecutive": c}
        print(json.dumps(r)[:600], flush=True); out.append(r)
        res["host"] = out; save()

def section_d():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right
    import torch.nn.functional as F
    out = []
    for chunk, prior in ((2048, 8192), (8192, 0), (2048, 0)):
        S = chunk + prior
        q = torch.randn(1, 32, chunk, 128, device=dev, dtype=bf)
        k = torch.randn(1, 8, S, 128, device=dev, dtype=bf); v = torch.randn_like(k)
        k32 = k.repeat_interleave(4, 1); v32 = v.repeat_interleave(4, 1)
        flops = 4 * 32 * 128 * sum(prior + i + 1 for i in range(chunk))
        for be in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            for gqa in (True, False):
                for mask in ("lower_right", "is_causal"):
                    if mask == "is_causal" and prior:
                        continue
                    try:
                        kk, vv = (k, v) if gqa else (k32, v32)
                        kw = dict(enable_gqa=True) if gqa else {}
                        am = causal_lower_right(chunk, S) if mask == "lower_right" else None
                        def f():
                            with sdpa_kernel(getattr(SDPBackend, be)):
                                if am is None:
                                    return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **kw)
                                return F.scaled_dot_product_attention(q, kk, vv, attn_mask=am, **kw)
                        f(); torch.cuda.synchronize()
                        ts = []
                        for _ in range(10):
                            s_, e_ = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            s_.record(); f(); e_.record(); e_.synchronize(); ts.append(s_.elapsed_time(e_))
                        t = statistics.median(ts)
                        r = dict(chunk=chunk, prior=prior, backend=be, gqa=gqa, mask=mask, ms=t, tflops=flops / t / 1e9)
                    except Exception as e:
                        r = dict(chunk=chunk, prior=prior, backend=be, gqa=gqa, mask=mask, fail=str(e)[:200])
                    print(r, flush=True); out.append(r)
    res["sdpa"] = out; save()

def section_e():
    from real import attention, batch as rbatch
    from real.model_runner import ModelRunner
    from nexus.specs import MODELS
    from bench_step_breakdown import Breakdown
    spec = MODELS["llama-3.1-8b"]
    runner = ModelRunner(spec, device="cuda", num_blocks=40000, max_model_len=16448, max_batch_tokens=8192)
    runner.kv.data.normal_()
    bd = Breakdown(runner, 12)
    shapes = [("decode", 64, 1024), ("decode", 256, 1024), ("decode", 16, 16384), ("decode", 64, 4096),
              ("decode", 128, "conversation"), ("decode", 32, "conversation"), ("decode", 256, "conversation")]
    batches = {s: bd.batch(*s) for s in shapes}
    kvt = spec.kv_bytes_per_token
    orig_items, orig_cap = attention.decode_items_for, attention.LONG_CONTEXT
    out = []
    for spare, cap, cfg in [(32, 2, None), (32, 1.5, None), (32, 1, None), (64, 2, None), (64, 1.5, None), (64, 1, None),
                            (128, 1, None), (128, 1, (128, 4, 3))]:
        rbatch.decode_items_for = lambda n, kvh, sms, spare=spare: n + spare
        attention.LONG_CONTEXT = cap
        base = dict(attention.DECODE_CONFIG)
        if cfg:
            attention.DECODE_CONFIG.update(BLOCK_N=cfg[0], num_warps=cfg[1], num_stages=cfg[2])
        try:
            frac = {}
            for (k, a, b), bt in batches.items():
                ms = bd.attention_ms(bt)
                frac[f"{a}x{b}"] = round(sum(c.end for c in bt) * kvt / bw / (ms / 1e3), 4)
        except Exception as e:
            frac = {"error": repr(e)[:200]}
        attention.DECODE_CONFIG.clear(); attention.DECODE_CONFIG.update(base)
        r = {"spare": spare, "long_context": cap, "cfg": cfg, "fraction_of_copy": frac}
        print(r, flush=True); out.append(r)
        res["decode_schedule"] = out; save()
    rbatch.decode_items_for = orig_items; attention.LONG_CONTEXT = orig_cap

for name in sys.argv[1:]:
    t = time.time()
    try:
        globals()["section_" + name]()
    except Exception as e:
        import traceback; traceback.print_exc(); res[f"error_{name}"] = repr(e); save()
    print(f"section {name} done in {time.time() - t:.0f}s", flush=True)
save()
