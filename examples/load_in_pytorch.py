#!/usr/bin/python3
"""Loads a model trained by this library into the official PyTorch package.

    export XLSTM_REFS=/path/to/folder/holding/xlstm    # a clone of NX-AI/xlstm
    train_char_lm --text FILE --save-dir char-model     # or any model.safetensors + config.json
    /usr/bin/python3 examples/load_in_pytorch.py char-model --check check.safetensors
    from_pytorch check.safetensors --prefix param.      # the C++ side reproduces torch's logits
    /usr/bin/python3 examples/load_in_pytorch.py parity.safetensors   # train_parity --save FILE

The model is a folder (config.json + model.safetensors) or a training checkpoint
of train_parity (the parameters beside the AdamW moments
`exp_avg.*`, `exp_avg_sq.*`; the config in the metadata entry of the run).
Builds the official `xLSTMLMModel` from the config (dacite, strict: an unknown
or missing field is an error), loads `model.safetensors` with
`load_state_dict(strict=True)` (every name and shape must match the official
state_dict), runs the tokens (a fixed sequence, or --tokens) through it and
prints the logits' statistics. With --check FILE it writes the parameters
(prefix `param.`), `input.tokens` and torch's `output.logits` into one
safetensors file with the config in its metadata: `from_pytorch FILE --prefix
param.` then runs the same tokens in C++ and compares.

Needs torch and dacite (Debian: python3-torch python3-dacite); reads and
writes safetensors itself (Debian 12 has no python3-safetensors). The sLSTM
runs on the official `vanilla` (CPU) backend.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
          "I32": np.int32}


def read_safetensors(path):
    """({name: numpy array}, metadata) of a safetensors file (BF16 widened to float32)."""
    with open(path, "rb") as f:
        data = f.read()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_size])
    body = data[8 + header_size:]
    tensors = {}
    metadata = header.get("__metadata__", {})
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = body[begin:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in DTYPES:
            array = np.frombuffer(raw, dtype=DTYPES[info["dtype"]])
        else:
            sys.exit("load_in_pytorch.py: %s: tensor %s has dtype %s, not supported here"
                     % (path, name, info["dtype"]))
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors, metadata


def read_model(path):
    """(config dict, {name: array}) of a model folder or a training checkpoint."""
    if os.path.isdir(path):
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        tensors, _ = read_safetensors(os.path.join(path, "model.safetensors"))
        return config, tensors
    tensors, metadata = read_safetensors(path)
    runs = [json.loads(v) for k, v in metadata.items() if k.endswith(".run")]
    if not runs or "model_config" not in runs[0]:
        sys.exit("load_in_pytorch.py: %s is neither a folder nor a training checkpoint "
                 "(no '<program>.run' metadata with a model_config)" % path)
    params = {k: v for k, v in tensors.items() if not k.startswith(("exp_avg.", "exp_avg_sq."))}
    return runs[0]["model_config"], params


def write_safetensors(path, tensors, metadata):
    """Writes {name: numpy array} (float32 / int64) with string metadata."""
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[array.dtype]
        blob = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a folder with model.safetensors and config.json, "
                        "or a training checkpoint")
    parser.add_argument("--tokens", help="comma-separated token ids (default: 0, 1, 2, ...)")
    parser.add_argument("--check", help="write params, tokens and torch's logits to this file")
    args = parser.parse_args()

    refs = os.environ.get("XLSTM_REFS")
    if refs:
        sys.path.insert(0, os.path.join(refs, "xlstm"))
    try:
        import torch
        from dacite import Config, from_dict
        from xlstm import xLSTMLMModel, xLSTMLMModelConfig
    except ImportError as e:
        sys.exit("load_in_pytorch.py: %s (set XLSTM_REFS to the folder holding the official "
                 "xlstm clone; Debian: apt-get install python3-torch python3-dacite)" % e)

    config_dict, tensors = read_model(args.model)
    if config_dict.get("slstm_block") and config_dict["slstm_block"].get("slstm"):
        config_dict["slstm_block"]["slstm"]["backend"] = "vanilla"  # the CPU path
    config = from_dict(xLSTMLMModelConfig, config_dict, config=Config(strict=True))
    model = xLSTMLMModel(config)
    state = {name: torch.from_numpy(array) for name, array in tensors.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    print("loaded %d tensors (%d parameters) into the official xLSTMLMModel, strict"
          % (len(state), sum(p.numel() for p in model.parameters())))

    vocab = config.vocab_size
    if args.tokens:
        ids = [int(t) for t in args.tokens.split(",")]
    else:
        ids = [i % vocab for i in range(min(16, config.context_length))]
    tokens = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        logits = model(tokens).float()
    print("logits %s: mean %.6f, std %.6f, min %.6f, max %.6f; argmax of the last step %d"
          % (tuple(logits.shape), logits.mean().item(), logits.std().item(),
             logits.min().item(), logits.max().item(), logits[0, -1].argmax().item()))

    if args.check:
        out = {"param." + name: t.detach().float().numpy() for name, t in state.items()}
        out["input.tokens"] = tokens.numpy()
        out["output.logits"] = logits.numpy()
        write_safetensors(args.check, out, {"config": json.dumps(config_dict)})
        print("wrote", args.check)


if __name__ == "__main__":
    main()
