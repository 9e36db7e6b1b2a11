"""alignkit.generation.decoding: product-of-experts sampling with per-model KV caches.

Closed forms on toy distributions for the step functions; on the review world: greedy equals
`generation.generate` token for token, first-token frequencies match the exact product distribution
(chi-square, with a control showing the test rejects a wrong distribution), and the returned log-probs,
KL and costs match an independent uncached forward pass.
"""

import math
import types

import pytest
import torch
import torch.nn.functional as F

from alignkit.generation import generate, prompt_ids
from alignkit.generation.decoding import (
    common_vocab,
    product_logits,
    sample_product,
    sampling_logprobs,
    step_kl,
)
from alignkit.worlds import reviews

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(review_model_pair):
    """The pretrained review model, a noisy copy of it on the same tokenizer (conftest), and the tokenizer."""
    return review_model_pair


def _log(p):
    return torch.tensor(p, dtype=torch.float64).log()[None]


def test_product_of_toy_distributions_is_the_normalised_product():
    p1, p2 = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]
    l1, l2 = _log(p1) + 3.0, _log(p2) - 7.0  # logits up to a constant: log_softmax removes it
    # (1, 1): ∝ [1/8, 1/16, 1/8] = [0.4, 0.2, 0.4]
    q = sampling_logprobs(product_logits([l1, l2], [1.0, 1.0]), 1.0).exp()
    torch.testing.assert_close(q, torch.tensor([[0.4, 0.2, 0.4]], dtype=q.dtype))
    # (1, 1) at T = 0.5: squares, ∝ [1/64, 1/256, 1/64] = [4/9, 1/9, 4/9]
    q = sampling_logprobs(product_logits([l1, l2], [1.0, 1.0]), 0.5).exp()
    torch.testing.assert_close(q, torch.tensor([[4 / 9, 1 / 9, 4 / 9]], dtype=q.dtype))
    # geometric mixture (½, ½): ∝ [√(1/8), 1/4, √(1/8)]
    g = [math.sqrt(1 / 8), 1 / 4, math.sqrt(1 / 8)]
    q = sampling_logprobs(product_logits([l1, l2], [0.5, 0.5]), 1.0).exp()
    torch.testing.assert_close(q, torch.tensor([[x / sum(g) for x in g]], dtype=q.dtype))
    # a negative exponent divides: p1 / p2 ∝ [2, 1, 1/2]
    q = sampling_logprobs(product_logits([l1, l2], [1.0, -1.0]), 1.0).exp()
    torch.testing.assert_close(q, torch.tensor([[4 / 7, 2 / 7, 1 / 7]], dtype=q.dtype))


def test_zero_exponent_leaves_a_model_out_exactly():
    l1 = _log([0.5, 0.25, 0.25])
    masked = torch.tensor([[-math.inf, 0.0, 0.0]], dtype=torch.float64)  # 0 · (−inf) would be NaN
    assert torch.equal(product_logits([l1, masked], [1.0, 0.0]), F.log_softmax(l1.float(), -1))  # float32 out
    with pytest.raises(ValueError, match="every exponent is 0"):
        product_logits([l1], [0.0])


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    z = _log([0.5, 0.3, 0.15, 0.05])
    q = sampling_logprobs(z, 1.0, top_p=0.7).exp()  # 0.5 < 0.7 ≤ 0.8: two tokens
    torch.testing.assert_close(q, torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=q.dtype))
    q = sampling_logprobs(z, 1.0, top_p=0.9).exp()  # 0.8 < 0.9 ≤ 0.95: three tokens
    torch.testing.assert_close(q, torch.tensor([[0.5, 0.3, 0.15, 0.0]], dtype=q.dtype) / 0.95)
    assert torch.equal(sampling_logprobs(z, 0.0, top_p=0.1), F.log_softmax(z, -1))  # greedy: untempered, no cut


def test_step_kl_closed_form():
    logq, logp = _log([0.5, 0.5, 0.0]), _log([0.25, 0.25, 0.5])
    torch.testing.assert_close(step_kl(logq, logp), torch.tensor([math.log(2)], dtype=torch.float64))
    assert step_kl(logp, logp).item() == 0.0


def test_single_model_greedy_reproduces_generate(world):
    model, _, tok = world
    prompts = reviews.prompts(5, seed=3) + ["Review:", "Review: The music"]  # ragged: left padding matters
    want = generate(model, tok, prompts, k=2, max_new_tokens=24, temperature=0)
    got = sample_product([model], [1.0], tok, prompts, k=2, max_new_tokens=24, temperature=0, return_logps=True)
    assert got.token_ids == want.token_ids and got.finished == want.finished and got.stop_ids == want.stop_ids
    assert got.texts == want.texts and any(want.finished[b][0] for b in range(len(prompts)))
    assert got.kl is None and got.logps.shape == (len(prompts), 2, 1)


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson chi-square over tokens with expected count >= 5, the rest pooled; (statistic, df)."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    return float(((obs - exp) ** 2 / exp.clamp(min=1e-12)).sum()), int(big.sum())


def _first_token_probs(models, exponents, tok, prompt, temperature, top_p):
    """The exact first-token distribution, from plain (uncached) forwards and explicit arithmetic."""
    ids = torch.tensor([prompt_ids(tok, prompt)])
    with torch.no_grad():
        z = sum(e * F.log_softmax(m(ids).logits[0, -1].double(), -1) for m, e in zip(models, exponents))
    p = torch.softmax(z / temperature, -1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order] = (p[order].cumsum(0) - p[order]) < top_p
    p = torch.where(keep, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("case", [(1, [1.0], 1.0, 1.0), (2, [0.5, 0.5], 0.8, 0.9), (2, [1.0, 1.0], 1.3, 1.0)])
def test_first_token_frequencies_match_the_product_distribution(world, case):
    n_models, exponents, temperature, top_p = case
    models = list(world[:n_models])
    tok, prompt, n = world[2], "Review: The plot was", 3000
    gen = sample_product(models, exponents, tok, [prompt], k=n, max_new_tokens=1, temperature=temperature,
                         top_p=top_p, seed=1)
    first = [ids[0] if ids else s for ids, s in zip(gen.token_ids[0], gen.stop_ids[0])]
    counts = torch.bincount(torch.tensor(first), minlength=len(tok)).double()
    probs = _first_token_probs(models, exponents, tok, prompt, temperature, top_p)[:len(counts)]
    assert counts[probs == 0].sum() == 0  # nothing drawn outside the nucleus
    stat, df = _chi2(counts, probs)
    assert df >= 10 and stat < df + 5 * math.sqrt(2 * df), (stat, df)  # ~5 sd above the chi2 mean
    # control: the same counts reject the distribution at 1.5x the temperature (the test has power)
    wrong = _first_token_probs(models, exponents, tok, prompt, temperature * 1.5, top_p)[:len(counts)]
    stat_wrong, df_wrong = _chi2(counts, wrong)
    assert stat_wrong > df_wrong + 5 * math.sqrt(2 * df_wrong), stat_wrong


def test_logps_kl_and_cost_match_an_uncached_forward(world):
    model, other, tok = world
    prompts = reviews.prompts(3, seed=4) + ["Review:"]
    gen = sample_product([model, other], [0.5, 0.5], tok, prompts, k=2, max_new_tokens=10, temperature=0.9,
                         top_p=0.95, seed=2, return_logps=True)
    assert gen.logps.shape == (4, 2, 2) and gen.product_logps.shape == gen.kl.shape == (4, 2)
    for b, prompt in enumerate(prompts):
        p_ids = prompt_ids(tok, prompt)
        for j in range(2):
            ids = gen.token_ids[b][j] + ([gen.stop_ids[b][j]] if gen.finished[b][j] else [])
            full = torch.tensor([p_ids + ids])
            with torch.no_grad():
                lps = [F.log_softmax(m(full).logits[0, len(p_ids) - 1:-1].double(), -1) for m in (model, other)]
            target = torch.tensor(ids)[:, None]
            for m in range(2):
                assert gen.logps[b, j, m].item() == pytest.approx(lps[m].gather(-1, target).sum().item(), abs=1e-3)
            logq = sampling_logprobs(0.5 * lps[0] + 0.5 * lps[1], 0.9, 0.95)
            assert gen.product_logps[b, j].item() == pytest.approx(logq.gather(-1, target).sum().item(), abs=1e-3)
            logp = F.log_softmax(lps[0] / 0.9, -1)
            assert gen.kl[b, j].item() == pytest.approx(step_kl(logq, logp).sum().item(), abs=1e-3)
            # cost: n tokens sampled (stop included) -> n passes and len(prompt) + n - 1 tokens, per model
            assert gen.calls[b][j] == 2 * len(ids) and gen.tokens[b][j] == 2 * (len(p_ids) + len(ids) - 1)


def test_seeded_reproducible_and_global_rng_untouched(world):
    model, _, tok = world
    prompts = reviews.prompts(4, seed=5)
    state = torch.random.get_rng_state()
    a = sample_product([model], [1.0], tok, prompts, k=3, max_new_tokens=12, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = sample_product([model], [1.0], tok, prompts, k=3, max_new_tokens=12, seed=7)
    c = sample_product([model], [1.0], tok, prompts, k=3, max_new_tokens=12, seed=8)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_bad_inputs_name_the_problem(world):
    model, _, tok = world
    with pytest.raises(ValueError, match="one exponent per model"):
        sample_product([model], [1.0, 1.0], tok, ["Review:"])
    with pytest.raises(ValueError, match="finite"):
        sample_product([model], [math.inf], tok, ["Review:"])
    with pytest.raises(ValueError, match="temperature"):
        sample_product([model], [1.0], tok, ["Review:"], temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        sample_product([model], [1.0], tok, ["Review:"], top_p=0.0)
    with pytest.raises(ValueError, match="every exponent is 0"):
        sample_product([model], [0.0], tok, ["Review:"], max_new_tokens=2)
    with pytest.raises(ValueError, match="vocabulary sizes"):
        common_vocab([torch.zeros(1, len(tok) - 1)], tok)


def test_cached_lm_reads_the_kv_cache_under_its_current_name(tiny):
    """transformers >= 5 names an output's KV cache ``cache`` (``past_key_values`` is a deprecated alias):
    a model whose outputs carry only ``cache`` decodes exactly as the model itself."""
    model, tok = tiny

    class CacheOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True,
                    logits_to_keep=0):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)
            return types.SimpleNamespace(logits=out.logits, cache=out.cache)

    prompts = ["hello world", "the movie was really"]
    want = sample_product([model], [1.0], tok, prompts, max_new_tokens=8, temperature=0)
    got = sample_product([CacheOnly(model)], [1.0], tok, prompts, max_new_tokens=8, temperature=0)
    assert got.token_ids == want.token_ids and any(len(ids[0]) > 1 for ids in got.token_ids)
