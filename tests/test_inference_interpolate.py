"""Model-interpolation decoding (`--method interpolate`, DeRa): q_t ∝ π_base^(1−w) · π_tuned^w.

w = 0 reproduces the base model and w = 1 the tuned model token for token (greedy against
transformers' own greedy decoding, sampling against the same-seed sampler of the single model); for
0 < w < 1 every greedy token is the argmax of the mixed log-probs recomputed here by full (uncached)
forwards of both models."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_inference_guided import GREEDY, PROMPTS, SAMPLE, first, ids_of

from alignkit.generation import generate, prompt_ids
from alignkit.generation.decoding import sample_product
from alignkit.inference import run_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_weight_0_is_the_base_model_and_1_the_tuned_model(review_model_pair):
    base, tuned, tok = review_model_pair
    base_g = generate(base, tok, PROMPTS, max_new_tokens=20, temperature=0)
    tuned_g = generate(tuned, tok, PROMPTS, max_new_tokens=20, temperature=0)
    assert first(base_g) != first(tuned_g)  # the two limits are distinguishable
    for w, want in ((0.0, base_g), (1.0, tuned_g)):
        out = run_method("interpolate", base, tok, PROMPTS, settings=GREEDY, options={"w": w}, helper=tuned)
        assert ids_of(out) == first(want) and all(o.kl is None for o in out)
    for w, m in ((0.0, base), (1.0, tuned)):  # same seed: exactly that model's own samples
        out = run_method("interpolate", base, tok, PROMPTS, settings=SAMPLE, options={"w": w}, helper=tuned)
        assert ids_of(out) == first(sample_product([m], [1.0], tok, PROMPTS, max_new_tokens=20, seed=SAMPLE.seed))
        assert all((abs(o.kl) < 1e-5) == (w == 0.0) for o in out)  # KL to the base: 0 only for the base
        n = [len(o.token_ids) + o.finished for o in out]
        assert [o.calls for o in out] == [k * (1 if w == 0 else 2) for k in n]  # w = 0 never runs the helper


def test_intermediate_weight_takes_the_argmax_of_the_geometric_mixture(review_model_pair):
    base, tuned, tok = review_model_pair
    w = 0.4
    out = run_method("interpolate", base, tok, PROMPTS, settings=GREEDY, options={"w": w}, helper=tuned)
    checked = 0
    for o in out:
        p_ids = prompt_ids(tok, o.prompt)
        ids = o.token_ids + ([tok.eos_token_id] if o.finished else [])
        full = torch.tensor([p_ids + ids])
        with torch.no_grad():
            lb, lt = (F.log_softmax(m(full).logits[0, len(p_ids) - 1:-1].float(), -1) for m in (base, tuned))
        mixed = (1 - w) * lb + w * lt
        assert mixed.argmax(-1).tolist() == ids
        checked += len(ids)
    assert checked > 20
    sampled = run_method("interpolate", base, tok, PROMPTS, settings=SAMPLE, options={"w": w}, helper=tuned)
    assert all(o.kl > 0 for o in sampled)


def test_extrapolation_and_bad_weights(review_model_pair):
    base, tuned, tok = review_model_pair
    out = run_method("interpolate", base, tok, PROMPTS[:2], settings=SAMPLE, options={"w": 2.0}, helper=tuned)
    assert all(math.isfinite(o.kl) and o.kl > 0 for o in out)
    with pytest.raises(ValueError, match="finite weight w"):
        run_method("interpolate", base, tok, PROMPTS[:1], settings=SAMPLE, options={"w": math.inf}, helper=tuned)
    with pytest.raises(ValueError, match="needs a helper"):
        run_method("interpolate", base, tok, PROMPTS[:1], settings=SAMPLE, options={"w": 0.5})
