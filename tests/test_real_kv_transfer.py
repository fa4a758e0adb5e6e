"""KV transfer between two processes over gloo: what arrives is bit-for-bit what was sent."""
import pytest

torch = pytest.importorskip("torch")
mp = pytest.importorskip("torch.multiprocessing")

from real.kv_cache import KVCache  # noqa: E402
from real.kv_transfer import KVLink, connect, free_port, link_groups, pack_blocks, unpack_blocks  # noqa: E402
from real_helpers import TINY  # noqa: E402

SOURCE_BLOCKS = [[5, 2, 9], [0], [11, 1, 4, 7, 3, 8]]   # one request per list, scattered ids
DEST_BLOCKS = [[7, 0, 3], [12], [1, 2, 4, 5, 6, 10]]


def random_cache(dtype: torch.dtype, seed: int, device: str = "cpu") -> KVCache:
    """A cache whose every element is a random bit pattern (NaNs and infinities included)."""
    cache = KVCache(TINY, 13, device, dtype)
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(-2**15, 2**15, cache.data.shape, generator=gen, dtype=torch.int32)
    if dtype.itemsize == 2:
        cache.data.view(torch.int16).copy_(bits.to(torch.int16))
    else:
        cache.data.view(torch.int32).copy_(bits * 65599 + 12345)
    return cache


DTYPES = [torch.bfloat16, torch.float32]


def _transfer(rank: int, port: int, out: str, device_type: str = "cpu") -> None:
    device = torch.device(device_type, rank if device_type == "cuda" else None)
    if device_type == "cuda":
        torch.cuda.set_device(device)
    connect(rank, port, timeout_s=60)
    for dtype in DTYPES:   # one link per cache, as an engine would have
        meta_group, data_group = link_groups(device)
        cache = random_cache(dtype, seed=rank, device=device)
        link = KVLink(cache, peer=1 - rank, meta_group=meta_group, data_group=data_group)
        if rank == 0:
            sent = [link.send([i, 100 + i, -i], ids) for i, ids in enumerate(SOURCE_BLOCKS)]
            link.send([42])
            link.close()
            torch.save({"cache": cache.data.cpu(), "sent": sent}, f"{out}/rank0_{dtype}.pt")
        else:
            asked, messages = [], []
            while (msg := link.recv(lambda meta, n: asked.append((meta, n)) or DEST_BLOCKS[meta[0]])) is not None:
                messages.append(msg)
            torch.save({"cache": cache.data.cpu(), "before": random_cache(dtype, seed=1).data, "asked": asked,
                        "messages": [(m.meta, m.block_ids, m.payload_bytes) for m in messages]},
                       f"{out}/rank1_{dtype}.pt")


TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, TWO_GPUS])])
def transferred(request, tmp_path_factory):
    """gloo between two CPU processes, or NCCL between cuda:0 and cuda:1."""
    out = tmp_path_factory.mktemp(f"kv_{request.param}")
    mp.spawn(_transfer, args=(free_port(), str(out), request.param), nprocs=2, join=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_transferred_kv_equals_source_bit_for_bit(transferred, dtype):
    src = torch.load(transferred / f"rank0_{dtype}.pt")
    dst = torch.load(transferred / f"rank1_{dtype}.pt")
    as_int = torch.int16 if dtype.itemsize == 2 else torch.int32
    source, dest, before = (t.view(as_int) for t in (src["cache"], dst["cache"], dst["before"]))

    block_bytes = TINY.num_layers * 2 * 16 * TINY.num_kv_heads * TINY.head_dim * dtype.itemsize
    assert src["sent"] == [len(ids) * block_bytes for ids in SOURCE_BLOCKS]
    assert dst["asked"] == [([i, 100 + i, -i], len(ids)) for i, ids in enumerate(SOURCE_BLOCKS)]
    assert dst["messages"] == [([i, 100 + i, -i], DEST_BLOCKS[i], len(ids) * block_bytes)
                               for i, ids in enumerate(SOURCE_BLOCKS)] + [([42], [], 0)]
    for src_ids, dst_ids in zip(SOURCE_BLOCKS, DEST_BLOCKS):
        assert torch.equal(dest[:, :, dst_ids], source[:, :, src_ids])
    written = {b for ids in DEST_BLOCKS for b in ids}
    untouched = [b for b in range(dest.shape[2]) if b not in written]
    assert torch.equal(dest[:, :, untouched], before[:, :, untouched])


def test_pack_then_unpack_is_the_identity_on_the_chosen_blocks():
    src, dst = random_cache(torch.float32, 3), random_cache(torch.float32, 4)
    packed = pack_blocks(src, [6, 1])
    assert packed.is_contiguous() and packed.shape[2] == 2
    unpack_blocks(dst, [0, 9], packed)
    assert torch.equal(dst.data.view(torch.int32)[:, :, [0, 9]], src.data.view(torch.int32)[:, :, [6, 1]])
