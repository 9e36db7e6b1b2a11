"""Best-of-N at N = 16: one shared prefill (`alignkit.generation.prefill`) vs transformers' ``generate``.

Variants, timed in one process on the same prompts (generated tokens per second, stop tokens included;
every variant scores its samples with the same trivial reward and takes the argmax):

* ``shared``   — ``run_method("bon", n=16)``: each prompt is prefilled once, its KV cache copied 16 times;
* ``separate`` — 16 calls of `alignkit.generation.generate` with ``k=1`` (one per sample);
* ``hf_n16``   — one `generate` call with ``k=16`` (``num_return_sequences=16``: transformers expands the
  prompt 16 times *before* the prefill).

Cases: ``prefill-heavy`` (`build_tiny` with 4 layers, hidden 256; 200-token prompts; 32 new tokens) and
``review-world`` (the review world's model size: 2 layers, hidden 64; 32 of its 4-6-token prompts; 32
new tokens — pass ``--world PATH`` to use a built world's checkpoint instead of a same-sized random model).
Each variant runs ``--rounds`` times, interleaved; the table shows each one's fastest round.

    python bench/bon_prefill.py [--prompts 4] [--world-prompts 32] [--rounds 2] [--threads 1] [--world PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

N = 16


def trivial_reward(prompts, completions, rows):
    return [float(len(c)) for c in completions]


def make_case(name: str, args, work: str):
    from alignkit.models.load import load_model, load_tokenizer
    from alignkit.models.tiny import build_tiny, default_corpus
    from alignkit.worlds import reviews

    if name == "review-world" and args.world:
        return load_model(args.world), load_tokenizer(args.world), reviews.prompts(args.world_prompts, seed=0)
    if name == "review-world":
        path = build_tiny(f"{work}/small", hidden_size=64, num_layers=2, seed=0)
        return load_model(str(path)), load_tokenizer(str(path)), reviews.prompts(args.world_prompts, seed=0)
    path = build_tiny(f"{work}/big", hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, seed=0)
    tok = load_tokenizer(str(path))
    lines, prompts = default_corpus(4000, seed=1), []
    for p in range(args.prompts):
        ids = tok(" ".join(lines[p * 40:(p + 1) * 40]))["input_ids"][:200]
        assert len(ids) == 200, "corpus too short for a 200-token prompt"
        prompts.append(tok.decode(ids))
    return load_model(str(path)), tok, prompts


def _generated(gen) -> int:
    return sum(len(ids) + done for row_ids, row_done in zip(gen.token_ids, gen.finished)
               for ids, done in zip(row_ids, row_done))


def _pick(gen):
    for p, texts in zip(gen.prompts, gen.texts):
        r = trivial_reward([p] * len(texts), texts, [{}] * len(texts))
        max(range(len(r)), key=r.__getitem__)


def variant(name, model, tok, prompts, max_new) -> int:
    """Run one variant; return the number of tokens it generated."""
    from alignkit.generation import generate
    from alignkit.generation.prefill import sample_shared

    if name == "shared":
        s = sample_shared(model, tok, prompts, N, max_new_tokens=max_new, batch_size=len(prompts))
        _pick(s.generation)
        return _generated(s.generation)
    if name == "separate":
        total = 0
        gens = [generate(model, tok, prompts, k=1, max_new_tokens=max_new, seed=i, batch_size=len(prompts))
                for i in range(N)]
        for g in gens:
            total += _generated(g)
        merged = type(gens[0])(prompts=prompts, texts=[[t for g in gens for t in g.texts[b]] for b in range(len(prompts))],
                               token_ids=[], finished=[])
        _pick(merged)
        return total
    g = generate(model, tok, prompts, k=N, max_new_tokens=max_new, batch_size=len(prompts))
    _pick(g)
    return _generated(g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4, help="prompts of the prefill-heavy case")
    ap.add_argument("--world-prompts", type=int, default=32, help="prompts of the review-world case")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--world", default=None, help="a review-world checkpoint (default: a same-sized random model)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = ("shared", "separate", "hf_n16")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for case in ("prefill-heavy", "review-world"):
            model, tok, prompts = make_case(case, args, work)
            model.eval()
            best = {n: (float("inf"), 0) for n in names}
            variant("shared", model, tok, prompts[:1], 4)  # warm-up
            for _ in range(args.rounds):
                for n in names:
                    t0 = time.perf_counter()
                    gen_tokens = variant(n, model, tok, prompts, args.max_new_tokens)
                    dt = time.perf_counter() - t0
                    best[n] = min(best[n], (dt, gen_tokens))
            shared_rate = best["shared"][1] / best["shared"][0]
            for n in names:
                dt, k = best[n]
                rows.append((case, n, dt, k, k / dt, shared_rate / (k / dt)))
    print(f"N = {N}, {args.prompts} / {args.world_prompts} prompts, {args.max_new_tokens} new tokens, "
          f"{args.threads} thread(s), fastest of {args.rounds} rounds")
    print(f"{'case':<14} {'variant':<9} {'seconds':>8} {'gen tokens':>10} {'tokens/s':>9} {'shared speed-up':>15}")
    for case, n, dt, k, rate, ratio in rows:
        print(f"{case:<14} {n:<9} {dt:>8.2f} {k:>10d} {rate:>9.0f} {ratio:>14.2f}x")


if __name__ == "__main__":
    main()
