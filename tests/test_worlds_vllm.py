"""The worlds' vLLM-compatible shape (alignkit.worlds.common.vllm_shape): a head size vLLM's CPU attention
takes, the default worlds left as they are."""

import pytest

from alignkit.worlds.arithmetic import ArithmeticConfig
from alignkit.worlds.common import VLLM_HEAD_DIMS, vllm_shape


@pytest.mark.parametrize("hidden", [64, 96, 128, 160, 256])
def test_vllm_shape_gives_an_accepted_head_size(hidden):
    shape = vllm_shape(hidden)
    assert hidden // shape["num_heads"] in VLLM_HEAD_DIMS and hidden % shape["num_heads"] == 0
    assert shape["num_heads"] % shape["num_kv_heads"] == 0
    # the most heads possible: one more head than that would give a refused (smaller) head size
    assert all(hidden % h or hidden // h not in VLLM_HEAD_DIMS for h in range(shape["num_heads"] + 1, hidden + 1))


def test_arithmetic_world_shapes():
    default = ArithmeticConfig()
    assert default.hidden_size // default.num_heads == 16  # the default world (its figures) is unchanged
    assert vllm_shape(default.hidden_size) == {"num_heads": 2, "num_kv_heads": 1}  # head_dim 32
    with pytest.raises(ValueError, match="no head size vLLM accepts"):
        vllm_shape(24)
