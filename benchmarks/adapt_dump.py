"""Dump, for a prefix of a file, the portable engine's final normalized hidden state
before every token (float32, n_embd) and the tokens, one token per engine call as the
compressor runs it: the input of the offline adaptation prototypes (benchmarks/adapt_proto.py).

    PYTHONPATH=. LMZIP_THREADS=1 python benchmarks/adapt_dump.py FILE BYTES OUT_PREFIX
"""

from __future__ import annotations

import sys
import time

import numpy as np

from lmzip.predictors.mixing import NO_MIX
from lmzip.predictors.registry import load_model


def main() -> None:
    path, nbytes, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    data = open(path, "rb").read()[:nbytes]
    model = load_model("smollm2-135m", backend="portable", mix=NO_MIX, threads=1)
    tokens = model.tokenizer.encode(data)
    eng = model._engine
    E = eng.n_embd
    h = eng.new_stream(model.context)
    out_l = np.empty((1, eng.n_vocab), dtype=np.float32)
    hid = np.empty((len(tokens), E), dtype=np.float32)
    t0 = time.time()
    prev = model.start_token
    for i, t in enumerate(tokens):
        eng.eval([h], [[prev]], out_l)
        eng.stream_hidden(h, hid[i])
        prev = t if t < eng.n_vocab else 0  # escapes are never in this text
        if i % 1000 == 0:
            print(f"{i}/{len(tokens)} {i / (time.time() - t0 + 1e-9):.1f} tok/s", flush=True)
    eng.free_stream(h)
    np.save(out + ".hidden.npy", hid)
    np.save(out + ".tokens.npy", np.array(tokens, dtype=np.int32))
    np.save(out + ".lastlogits.npy", out_l[0])
    print("done", len(tokens), time.time() - t0)


if __name__ == "__main__":
    main()
