#!/usr/bin/env python3
"""Writes the small PyTorch checkpoints that tests/test_torch_checkpoint.cpp reads.

Run from anywhere with a Python that has torch (Debian 12: apt-get install
python3-torch, then /usr/bin/python3 make_torch_checkpoints.py); the files are
written next to this script. See README.md for what each file is.

Every checkpoint whose tensors the test checks has a safetensors "twin" with the
same tensors (names, dtypes, shapes, values), written by the small writer below
rather than by a library, so the C++ test compares the two readers without torch.
"""

import collections
import json
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# Bytes of each dtype as the same-sized integer type (numpy has no bfloat16).
SAFETENSORS_DTYPE = {
    torch.float64: ("F64", torch.int64),
    torch.float32: ("F32", torch.int32),
    torch.float16: ("F16", torch.int16),
    torch.bfloat16: ("BF16", torch.int16),
    torch.int64: ("I64", torch.int64),
    torch.int32: ("I32", torch.int32),
    torch.uint8: ("U8", torch.uint8),
}


def tensor_bytes(tensor):
    """The tensor's elements, row-major, little-endian (x86 numpy is)."""
    _, same_size_int = SAFETENSORS_DTYPE[tensor.dtype]
    return tensor.detach().contiguous().view(same_size_int).numpy().tobytes()


def write_safetensors(path, tensors):
    """A safetensors file: 8-byte header length, JSON header, data back to back."""
    header, data = {}, b""
    for name, tensor in tensors.items():
        raw = tensor_bytes(tensor)
        header[name] = {
            "dtype": SAFETENSORS_DTYPE[tensor.dtype][0],
            "shape": list(tensor.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text + data)


def save(name, obj, **options):
    path = os.path.join(HERE, name)
    torch.save(obj, path, **options)
    print(f"{name}: {os.path.getsize(path)} bytes")


class Tiny(torch.nn.Module):
    """state_dict() of a real module: an OrderedDict with `_metadata`."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)


def plain_state_dict():
    """(a) every dtype, 0-d to 3-d, views sharing one storage, an empty tensor."""
    torch.manual_seed(15)
    state = Tiny().state_dict()  # proj.weight (3, 4), proj.bias (3,)
    state["scalar"] = torch.tensor(-2.5)
    state["vector_bf16"] = torch.randn(5).to(torch.bfloat16)
    state["matrix_f16"] = torch.randn(2, 3).to(torch.float16)
    state["cube_f64"] = torch.randn(2, 2, 2, dtype=torch.float64)
    state["ints_i64"] = torch.tensor([-(2**40), -1, 0, 2**62], dtype=torch.int64)
    state["ints_i32"] = torch.tensor([-7, 0, 2**31 - 1], dtype=torch.int32)
    state["bytes_u8"] = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    state["empty"] = torch.zeros(0, 3)
    # Views of one tensor share its storage: torch.save writes it once and
    # each view keeps its offset and strides.
    base = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    state["base"] = base
    state["view_rows"] = base[1:3]  # contiguous, storage offset 5
    state["view_columns"] = base[:, 1::2]  # strided (5, 2), offset 1
    state["view_transposed"] = base.t()  # strides (1, 5)
    state["expanded"] = torch.tensor([1.0, 2.0, 3.0]).expand(2, 3)  # stride 0
    state["parameter"] = torch.nn.Parameter(torch.tensor([0.25, 0.5]))  # _rebuild_parameter
    return state


def lightning_checkpoint():
    """(b) a Lightning-style checkpoint like TiRex's model.ckpt."""
    torch.manual_seed(16)
    state = collections.OrderedDict()
    state["block_stack.proj.weight"] = torch.randn(3, 4)
    state["block_stack.proj.bias"] = torch.randn(3)
    state["block_stack.blocks.0.norm.weight"] = torch.randn(4).to(torch.bfloat16)
    state["output_patch_embedding.hidden_layer.weight"] = torch.randn(2, 4)
    hyper_parameters = {
        "model_config": {
            "input_patch_size": 32,
            "output_patch_size": 32,
            "quantiles": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "block_kwargs": {
                "embedding_dim": 512,
                "num_heads": 4,
                "num_blocks": 12,
                "ffn_proj_factor": 2.6667,
                "slstm_at": "all",
                "bias": False,
            },
            "input_ff_dim": 2048,
        },
        "train_ctx_len": 2048,
        "nothing": None,
        "big": 2**40,
        "negative": -3,
        "negative_big": -(2**40),
        "pair": (1, "two"),
    }
    return {
        "state_dict": state,
        "hyper_parameters": hyper_parameters,
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "2.0.0",
    }


class Exploit:
    """Unpickling this runs os.system: what the restricted reader must refuse."""

    def __reduce__(self):
        return (os.system, ("echo unpickled",))


class CustomConfig:
    """A plain class instance: its global (__main__.CustomConfig) is refused too."""

    def __init__(self):
        self.width = 8


def main():
    print(f"torch {torch.__version__}")
    plain = plain_state_dict()
    save("plain.ckpt", plain)
    write_safetensors(os.path.join(HERE, "plain.safetensors"), plain)

    lightning = lightning_checkpoint()
    save("lightning.ckpt", lightning)
    write_safetensors(os.path.join(HERE, "lightning.safetensors"), lightning["state_dict"])
    # The same with pickle protocol 4 (torch.save's default is 2): framed, with
    # SHORT_BINUNICODE, MEMOIZE and STACK_GLOBAL.
    save("lightning_protocol4.ckpt", lightning, pickle_protocol=4)

    save("forbidden_global.ckpt", {"weight": torch.ones(2), "payload": Exploit()})
    save("custom_class.ckpt", {"weight": torch.ones(2), "config": CustomConfig()})


if __name__ == "__main__":
    main()
