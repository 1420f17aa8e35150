#!/usr/bin/env python3
"""PyTorch twin of `cargo xtask bench matmul`: the same T5 shape suite and
operand orders, timed the same way (one warm-up call, then the fastest of
repeated calls over at least --min-time seconds), written in the same JSON
schema so both runs can be put side by side.

    python3 benches/torch_matmul.py --threads 2 --json torch.json
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from twin import best_time, import_torch, write_json_atomic  # noqa: E402

SHAPES = [
    (1024, 512, 384), (1024, 384, 512), (1024, 512, 1024), (1024, 1024, 512),
    (1024, 768, 768), (1024, 768, 2048), (1024, 2048, 768),
    (80, 512, 32128), (80, 768, 32128), (2048, 2048, 2048),
]
OPS = ["nn", "nt", "tn"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch = import_torch(args.threads)
    rows = []
    for m, k, n in SHAPES:
        for op in OPS:
            a = torch.rand(m, k) * 2 - 1 if op[0] == "n" else torch.rand(k, m) * 2 - 1
            b = torch.rand(k, n) * 2 - 1 if op[1] == "n" else torch.rand(n, k) * 2 - 1
            fa = (lambda: a) if op[0] == "n" else (lambda: a.t())
            fb = (lambda: b) if op[1] == "n" else (lambda: b.t())
            out = torch.empty(m, n)
            t = best_time(lambda: torch.matmul(fa(), fb(), out=out), args.min_time)
            g = 2 * m * k * n / t / 1e9
            print(f"{m:>5} {k:>5} {n:>6}  {op:<3} f32   pytorch         {g:>8.1f}")
            rows.append(dict(m=m, k=k, n=n, op=op, dtype="f32", implementation="pytorch",
                             threads=args.threads, gflops=g))
    if args.json:
        write_json_atomic(args.json, {"threads": args.threads, "torch": torch.__version__, "results": rows})


if __name__ == "__main__":
    main()
