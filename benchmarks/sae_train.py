"""Top-K SAE training throughput: our jit step (sparse and dense kernels) vs the PyTorch way.

    python -m benchmarks.sae_train --d 512 --dict-size 2048 --k 16 --batch 1024 --json OUT

The PyTorch way is the reference's: dense `topk` + `scatter` codes, a dense decoder matmul,
`torch.optim.AdamW` (lr 1e-3, weight decay 0.01), on the GPU when there is one. Both train on
the same random unit-norm features; the figure is samples per second over `--steps` steps after
warm-up.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax
import torch

from benchmarks.common import median_seconds, peak_rss_mib, report, torch_device, torch_timed
from saeft_jax import parallel
from saeft_jax.sae.quality import data_statistics
from saeft_jax.sae.training import SAEOptions, initial_state, make_step


def ours(features: np.ndarray, dict_size: int, k: int, steps: int, sparse: bool) -> float:
    mesh = parallel.data_mesh()
    opts = SAEOptions(sparse=sparse)
    optimizer = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    state = initial_state(features, features.shape[1], dict_size, 0, opts, data_statistics(features), optimizer, mesh)
    step = make_step(optimizer, k, opts, len(features), mesh)
    batch = jax.device_put(features, parallel.batch_sharding(mesh))
    carry = {
        "state": state,
        "acc": {"sse": np.float32(0), "fires": np.zeros(dict_size, np.int32), "active": np.int32(0)},
    }

    def one_step():
        carry["state"], carry["acc"] = step(carry["state"], carry["acc"], batch)
        jax.block_until_ready(carry["acc"]["sse"])

    return median_seconds(one_step, steps)


def pytorch(features: np.ndarray, dict_size: int, k: int, steps: int) -> float:
    d, device = features.shape[1], torch_device()
    w_dec = torch.nn.functional.normalize(torch.randn(dict_size, d, device=device), dim=-1)
    params = [
        torch.nn.Parameter(torch.empty(d, dict_size, device=device).uniform_(-(d**-0.5), d**-0.5)),
        torch.nn.Parameter(w_dec),
        torch.nn.Parameter(torch.zeros(d, device=device)),
    ]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
    x_raw = torch.from_numpy(features).to(device)

    def one_step():
        w_enc, w_dec, b_pre = params
        x = x_raw / (x_raw.norm(dim=-1, keepdim=True) + 1e-8)
        pre = (x - b_pre) @ w_enc
        values, indices = pre.topk(k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, indices, values)
        loss = ((codes @ w_dec + b_pre - x) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return median_seconds(torch_timed(one_step), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--dict-size", type=int, default=2048)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    features = np.random.default_rng(0).normal(size=(args.batch, args.d)).astype(np.float32)
    sparse_s = ours(features, args.dict_size, args.k, args.steps, sparse=True)
    dense_s = ours(features, args.dict_size, args.k, args.steps, sparse=False)
    torch_s = pytorch(features, args.dict_size, args.k, args.steps)
    per_s = lambda seconds: args.batch / seconds
    report(
        {
            "benchmark": "sae_train",
            "d": args.d,
            "dict_size": args.dict_size,
            "k": args.k,
            "batch": args.batch,
            "steps": args.steps,
            "samples_per_s": per_s(sparse_s),
            "samples_per_s_dense_kernels": per_s(dense_s),
            "torch_samples_per_s": per_s(torch_s),
            "speedup_vs_torch": torch_s / sparse_s,
            "torch_device": torch_device(),
            "torch_threads": torch.get_num_threads(),
            "peak_rss_mib": peak_rss_mib(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
