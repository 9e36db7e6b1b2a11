"""Help text for command-line options that several subcommands share (no imports: any layer may use it).

One wording per option, so ``alignkit score --dtype`` and ``alignkit generate --dtype`` say the same thing;
`tests/test_cli_help.py` checks that every option of every subcommand has help.
"""

BAD_ROW = ("a row that does not parse: stop with its file, row and field (error), or write it to "
           "<out stem>.rejects.jsonl with the reason and count it (skip)")  # fmt: skip
LAYOUT = "force a data layout instead of detecting it from the columns (paired, conversation, unpaired, ranked, " \
         "scored, native)"  # fmt: skip
DTYPE = "dtype the model's weights are loaded in: float32 (default), bfloat16 or float16 (also fp32, bf16, fp16)"
TRUST_REMOTE_CODE = "let transformers run Python code from the model's repository (off by default: only for " \
                    "repositories you trust)"  # fmt: skip
CHAT_TEMPLATE = "the tokenizer's chat template: auto (for chat-message prompts), always (plain prompts too), never"
CHAT_TEMPLATE_KWARGS = "passed to the chat template, as train's chat_template_kwargs (e.g. '{enable_thinking: false}')"
MAX_NEW_TOKENS = "the most tokens sampled per completion"
TEMPERATURE = "sampling temperature (0: greedy)"
TOP_P = "nucleus sampling: sample from the smallest set of tokens with this much probability (1: all)"


def batch(what: str) -> str:
    return f"{what} per forward pass (lower it if memory runs out)"


def max_length(default: str) -> str:
    return f"truncate prompt + response to this many tokens (the prompt's start and the response's end are cut); {default}"


def seed(what: str) -> str:
    return f"random seed of {what}"
