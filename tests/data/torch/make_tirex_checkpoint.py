#!/usr/bin/env python3
"""Writes tirex_tiny.ckpt, a tiny TiRex checkpoint in the official layout, for tests/test_tirex.cpp.

A PyTorch Lightning-style dict like the official model.ckpt of TiRex (NX-AI/tirex):
{"state_dict": ..., "hyper_parameters": {"model_config": ..., "train_ctx_len": W}, ...}, with the
official state_dict keys, the block keys (and out_norm) under a "block_stack." prefix that the
loader deletes, the sLSTM recurrent kernel as (NH, DH, 4DH) and its bias head-major. Random
weights from a seeded torch generator (the same bytes on every run). Beside it,
tirex_tiny.safetensors holds the same tensors under the keys with the prefix removed.

It also writes torch_sums.safetensors: float32 rows of several lengths with NaN gaps and offsets
(`x.<n>`) and what torch.nansum returns for them (`nansum.<n>`, shape (1,)), the reference of
torch's CPU summation order for xlstm::torch_cascade_sum (float32, one thread).

Run with Debian's python3-torch: /usr/bin/python3 tests/data/torch/make_tirex_checkpoint.py
"""

import collections
import os

import torch

from make_torch_checkpoints import HERE, save, write_safetensors

P, W, D, NH, NB, FF = 4, 16, 8, 2, 2, 16
QUANTILES = [0.25, 0.5, 0.75]
FFN_FACTOR = 2.6667
F = int(((D * FFN_FACTOR + 63) // 64) * 64)  # the official float formula: 64
DH = D // NH
Q = len(QUANTILES)


def state_dict():
    torch.manual_seed(17)
    s = collections.OrderedDict()

    def linear(name, out_dim, in_dim):
        s[name + ".weight"] = torch.randn(out_dim, in_dim) / in_dim**0.5
        s[name + ".bias"] = 0.1 * torch.randn(out_dim)

    for part, dims in (("hidden_layer", (FF, 2 * P)), ("output_layer", (D, FF)),
                       ("residual_layer", (D, 2 * P))):
        linear("input_patch_embedding." + part, *dims)
    for i in range(NB):
        b = f"block_stack.blocks.{i}."
        s[b + "norm_slstm.weight"] = 1 + 0.1 * torch.randn(D)
        for gate in ("fgate", "igate", "zgate", "ogate"):
            s[b + f"slstm_layer.{gate}.weight"] = torch.randn(NH, DH, DH) / DH**0.5
        s[b + "slstm_layer.slstm_cell._recurrent_kernel_"] = torch.randn(NH, DH, 4 * DH) / DH**0.5
        bias = 0.3 * torch.randn(NH, 4, DH)
        bias[:, 1, :] += 2.0  # slot 1 is the forget gate
        s[b + "slstm_layer.slstm_cell._bias_"] = bias.reshape(-1)
        s[b + "slstm_layer.group_norm.weight"] = 0.1 * torch.randn(D)
        s[b + "norm_ffn.weight"] = 1 + 0.1 * torch.randn(D)
        s[b + "ffn.proj_up_gate.weight"] = torch.randn(F, D) / D**0.5
        s[b + "ffn.proj_up.weight"] = torch.randn(F, D) / D**0.5
        s[b + "ffn.proj_down.weight"] = torch.randn(D, F) / F**0.5
    s["block_stack.out_norm.weight"] = 1 + 0.1 * torch.randn(D)
    for part, dims in (("hidden_layer", (FF, D)), ("output_layer", (Q * P, FF)),
                       ("residual_layer", (Q * P, D))):
        linear("output_patch_embedding." + part, *dims)
    return s


def torch_sums():
    """Rows whose float32 sum depends on the summation order, and torch's sums of them."""
    torch.manual_seed(18)
    torch.set_num_threads(1)
    tensors = collections.OrderedDict()
    for n in (3, 7, 8, 13, 31, 64, 100, 257, 1000, 2048, 5000):
        x = 40.0 + 7.0 * torch.randn(n)
        x[torch.rand(n) < 0.15] = float("nan")
        tensors[f"x.{n}"] = x
        tensors[f"nansum.{n}"] = torch.nansum(x).reshape(1)
    return tensors


def main():
    print(f"torch {torch.__version__}")
    write_safetensors(os.path.join(HERE, "torch_sums.safetensors"), torch_sums())
    s = state_dict()
    checkpoint = {
        "state_dict": s,
        "hyper_parameters": {
            "model_config": {
                "input_patch_size": P,
                "output_patch_size": P,
                "quantiles": QUANTILES,
                "block_kwargs": {"embedding_dim": D, "num_heads": NH, "num_blocks": NB,
                                 "ffn_proj_factor": FFN_FACTOR},
                "input_ff_dim": FF,
            },
            "train_ctx_len": W,
        },
        "epoch": 1,
    }
    save("tirex_tiny.ckpt", checkpoint)
    renamed = collections.OrderedDict((k.replace("block_stack.", ""), v) for k, v in s.items())
    write_safetensors(os.path.join(HERE, "tirex_tiny.safetensors"), renamed)


if __name__ == "__main__":
    main()
