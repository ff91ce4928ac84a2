"""Time the verdict-link decoder on a stream of valid frames mixed with line noise.

Prints one JSON object: ``mb_per_s`` (decoder throughput, best of the runs), ``frames`` and
``rejects`` per pass (a check that it found what was put in), and the anchor measured in the
same run: ``anchor_mb_per_s``, a bare ``bytes.split(b"\\n")`` over the same input (the least any
line parser must do), and ``ratio`` = anchor / decoder time, the cost of everything else (CRC,
checks, frame objects). Input: about 4 MB of realistic frames (VERDICT, PROGRESS, ACK) with a
garbage line, a frame with flipped bits or a cut frame between them, fed in 4 KB pieces as a
serial port delivers them.

    python benchmarks/codec.py [--mb 4] [--repeat 3] [--chunk 4096]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from firmware_bridge.codec import Decoder, encode


def make_stream(size: int, seed: int = 0) -> tuple[bytes, int]:
    """Mixed input and how many valid frames it holds."""
    rng = random.Random(seed)
    parts, n, valid = [], 0, 0
    defects = ";".join(f"{rng.uniform(0, 190):.2f}:{rng.uniform(0, 70):.2f}:"
                       f"{rng.uniform(0.5, 15):.2f}:0.9{k}" for k in range(3))
    while n < size:
        seq = rng.randrange(65536)
        kind = rng.random()
        if kind < 0.25:
            line = encode(seq, "VERDICT", ["SIM00000042", str(seq), "FAIL", "3", defects,
                                           "3 scratch(es) found"])
        elif kind < 0.6:
            line = encode(seq, "PROGRESS", ["SIM00000042", str(seq % 10), "10"])
        else:
            line = encode(seq, "ACK", [str(seq), "INSPECT", "SIM00000042", "STARTED"])
        r = rng.random()
        if r < 0.1:  # noise before a frame: the frame itself must still be found
            parts.append(rng.randbytes(rng.randrange(1, 120)))
            valid += 1
        elif r < 0.2:  # a flipped bit
            b = bytearray(line)
            i = rng.randrange(1, len(b) - 2)
            b[i] ^= 1 << rng.randrange(7)
            line = bytes(b)
        elif r < 0.25:  # cut short
            line = line[:rng.randrange(1, len(line) - 1)]
        else:
            valid += 1
        parts.append(line)
        n += len(line)
    return b"".join(parts), valid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=4096)
    args = ap.parse_args()

    data, valid = make_stream(int(args.mb * 1e6))
    chunks = [data[i:i + args.chunk] for i in range(0, len(data), args.chunk)]

    best, frames, rejects = None, 0, 0
    for _ in range(args.repeat):
        dec = Decoder()
        t = time.perf_counter()
        for c in chunks:
            dec.feed(c)
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
        frames, rejects = dec.frames, sum(dec.rejects.values())

    anchor = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        tail = b""
        for c in chunks:
            lines = (tail + c).split(b"\n")
            tail = lines.pop()
        s = time.perf_counter() - t
        anchor = s if anchor is None else min(anchor, s)

    mb = len(data) / 1e6
    print(json.dumps({
        "mb_per_s": round(mb / best, 2), "input_mb": round(mb, 2), "chunk_bytes": args.chunk,
        "frames": frames, "frames_expected": valid, "rejects": rejects,
        "anchor_mb_per_s": round(mb / anchor, 2), "ratio": round(best / anchor, 2),
    }))


if __name__ == "__main__":
    main()
