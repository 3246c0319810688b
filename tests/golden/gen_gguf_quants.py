"""One small tensor per GGUF storage type, and its dequantisation by the `gguf` package.

llmprune dequantises GGUF tensors with candle; this is the independent reference: llama.cpp's
own Python package (`gguf`, numpy). Types it can quantise (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0) quantise a random [4, 256] matrix; for the K-quants it can only dequantise, the blocks are
random bytes with their f16 scale fields set to small finite values. Writes
`tests/fixtures/gguf_quants/{quants.gguf,dequantized.safetensors}`.

    python tests/golden/gen_gguf_quants.py
"""

import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "gguf_quants")
ROWS, COLS = 4, 256
QUANTISED = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
# Byte offsets of the f16 scale fields inside each K-quant block (llama.cpp's block_qN_K).
K_SCALE_OFFSETS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def main():
    rng = np.random.default_rng(97)
    os.makedirs(OUT, exist_ok=True)
    writer = GGUFWriter(os.path.join(OUT, "quants.gguf"), arch="llama")
    golden = {}
    for qtype in QUANTISED + list(K_SCALE_OFFSETS):
        if qtype in K_SCALE_OFFSETS:
            block, type_size = GGML_QUANT_SIZES[qtype]
            n_blocks = ROWS * COLS // block
            raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
            for off in K_SCALE_OFFSETS[qtype]:
                scales = rng.uniform(1e-3, 1e-2, size=n_blocks).astype(np.float16)
                raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
            data = raw.reshape(ROWS, -1)
        else:
            data = quantize(rng.standard_normal((ROWS, COLS)).astype(np.float32), qtype)
        name = f"t_{qtype.name.lower()}"
        # Quantised data is bytes ([rows, bytes per row]); the writer derives the element shape.
        writer.add_tensor(name, data, raw_dtype=None if qtype == T.F16 else qtype)
        golden[name] = np.ascontiguousarray(dequantize(data, qtype).reshape(ROWS, COLS).astype(np.float32))
        assert np.isfinite(golden[name]).all(), name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(golden, os.path.join(OUT, "dequantized.safetensors"))
    print(f"{len(golden)} tensors -> {OUT}")


if __name__ == "__main__":
    main()
