"""Diagnostic: eager chunked-prefill step times in a plain process vs after graph capture + warm-up."""
import gc, json, sys, time
sys.path.insert(0, '.')
from nexus.specs import MODELS, GPUS
from real.model_runner import ModelRunner
from real.bench import build_partitions, capture_all_graphs, make_policies, warm_up
from real.profile import Profiler, Grid
model, gpu = MODELS['llama-3.1-8b'], GPUS['h100-sxm']
pols = make_policies(['chunked'], {}, None, gpu)
runner = ModelRunner(model, device='cuda')
parts = build_partitions(pols, gpu, 'cuda')
prof = Profiler(runner, parts, 7)
part = parts.decode(0)
res = {}
def grid(tag):
    t0 = time.time(); r = []
    for chunk, prior in Grid().mixed_prefill:
        for b, c in Grid().mixed_decode:
            steps = prof.decode_batch(b, c) + prof.prefill_batch(chunk, prior)
            r.append([chunk, prior, b, c, prof.time_alone(steps, part)])
    res[tag] = r; print(tag, time.time() - t0, flush=True)
grid('plain')
capture_all_graphs(runner, parts); warm_up(runner, parts); gc.freeze()
grid('graphs')
grid('graphs2')
json.dump(res, open(sys.argv[1], 'w'))
