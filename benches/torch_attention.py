#!/usr/bin/env python3
"""PyTorch twin of `cargo xtask bench attention`: the same T5 attention suite
(batch 16, d_head 64, 6 or 12 heads; encoder self-attention with a position
bias and padded keys, forward and forward + backward; decoder cross-attention
with 1 or 5 query rows over padded encoder keys) through
`torch.nn.functional.scaled_dot_product_attention` on the CPU with scale=1.0
(T5 has no 1/sqrt(d)) and a float attn_mask = bias + padding mask. Timed the
same way (one warm-up call, then the fastest call over at least --min-time
seconds) and written in the same JSON schema.

    python3 benches/torch_attention.py --threads 2 --json torch-attention.json
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from twin import best_time, import_torch, write_json_atomic  # noqa: E402

BATCH, D_HEAD = 16, 64


def suite():
    cases = []
    for heads in (6, 12):
        for length in (64, 128, 268, 512):
            for pass_ in ("fwd", "fwd+bwd"):
                cases.append(("encoder", heads, length, length, pass_))
        for q_len, pass_ in ((1, "fwd"), (5, "fwd"), (5, "fwd+bwd")):
            for k_len in (64, 268, 512):
                cases.append(("cross", heads, q_len, k_len, pass_))
    return cases


def make_case(torch, kind, heads, q_len, k_len, pass_):
    """Inputs as the Rust suite builds them (values differ, sizes and masks agree)."""
    train = pass_ == "fwd+bwd"
    q = (torch.rand(BATCH, heads, q_len, D_HEAD) - 0.5).requires_grad_(train)
    k = (torch.rand(BATCH, heads, k_len, D_HEAD) - 0.5).requires_grad_(train)
    v = (torch.rand(BATCH, heads, k_len, D_HEAD) * 2 - 1).requires_grad_(train)
    # Sequence b has k_len - b*k_len//64 real keys, as in the Rust suite.
    lengths = torch.tensor([k_len - b * k_len // 64 for b in range(BATCH)])
    padded = torch.arange(k_len)[None, :] >= lengths[:, None]
    pad = torch.zeros(BATCH, 1, 1, k_len).masked_fill(padded[:, None, None, :], torch.finfo(torch.float32).min)
    bias = None
    if kind == "encoder":
        bias = ((torch.rand(1, heads, q_len, k_len) - 0.5) * 4).requires_grad_(train)
    dout = torch.rand(BATCH, heads, q_len, D_HEAD) * 2 - 1
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run():
        mask = pad if bias is None else bias + pad
        out = sdpa(q, k, v, attn_mask=mask, scale=1.0)
        if train:
            out.backward(dout)
            for t in (q, k, v, bias):
                if t is not None:
                    t.grad = None

    if train:
        return run

    def run_no_grad():
        with torch.no_grad():
            run()

    return run_no_grad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch = import_torch(args.threads)
    print(f"kind     heads  q_len  k_len  pass      torch-sdpa ms (batch {BATCH}, d_head {D_HEAD}, {args.threads} threads)")
    rows = []
    for kind, heads, q_len, k_len, pass_ in suite():
        t = best_time(make_case(torch, kind, heads, q_len, k_len, pass_), args.min_time)
        print(f"{kind:<8} {heads:>5} {q_len:>6} {k_len:>6}  {pass_:<8} {t * 1e3:>12.3f}")
        rows.append(dict(kind=kind, batch=BATCH, heads=heads, q_len=q_len, k_len=k_len, d_head=D_HEAD,
                         pass_=pass_, implementation="torch-sdpa", threads=args.threads, ms=t * 1e3))
    for r in rows:
        r["pass"] = r.pop("pass_")
    if args.json:
        write_json_atomic(args.json, {"threads": args.threads, "torch": torch.__version__, "results": rows})


if __name__ == "__main__":
    main()
