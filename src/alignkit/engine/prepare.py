"""Training data from a `TrainConfig`: read, transform, split, check against the objective, tokenize.

Everything here runs before any model is loaded, so a data problem (a bad row, a label kind the
objective cannot use, too few responses, score vectors without weights) stops the run in seconds.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from pathlib import Path

from alignkit.data.checks import pair_problems
from alignkit.data.dataset import TokenizedDataset, data_shape, split_by_prompt
from alignkit.data.io import read_records
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizeConfig
from alignkit.data.transforms import format_report
from alignkit.engine.samples import apply_with_samples
from alignkit.errors import DataError

logger = logging.getLogger("alignkit")


def read_split(config, path: str, split: str) -> list[PreferenceRecord]:
    """Records of one file; skipped rows (``on_bad_row=skip``) land in the run folder."""
    rejects = Path(config.output_dir) / f"{split}.{Path(path).stem}.rejects.jsonl"
    which = config.data_split if split == "train" else config.eval_data_split  # of a Hub / save_to_disk dataset
    return read_records(path, layout=config.layout, columns=config.columns, on_bad_row=config.on_bad_row,
                        rejects_path=rejects, split=which, subset=config.data_subset).records


def transform(config, records: list[PreferenceRecord], split: str) -> list[PreferenceRecord]:
    """Apply ``config.transforms`` (docs/data_transforms.md), logging what each one did."""
    if not config.transforms:
        return records
    records, reports = apply_with_samples(records, config.transforms, seed=config.seed,
                                          model=config.ref_model or config.model,
                                          cache_dir=Path(config.output_dir) / "samples", progress=config.progress)
    for spec, report in zip(config.transforms, reports):
        logger.info("%s data, %s", split, format_report(report) if "transform" in report else
                    f"{spec.get('name')}: {report}")
    if not records:
        names = [t.get("name") for t in config.transforms]
        raise DataError(f"{split} data: no records left after transforms {names}")
    return records


def resolve_shuffle(config) -> bool:
    """``shuffle=auto``: shuffle unless a curriculum transform put the records in order."""
    value = config.shuffle
    if value == "auto":
        return not any(t.get("name") == "curriculum" for t in config.transforms)
    return value  # resolved (alignkit.config.resolve): a bool


@contextlib.contextmanager
def main_process_first(accelerator):
    """The main process runs the block first (e.g. generating ``self_samples`` into the cache), then the
    others — and the others are released even when the main process raises, so nobody waits forever."""
    if accelerator.num_processes == 1:
        yield
        return
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
    try:
        yield
    finally:
        if accelerator.is_main_process:
            accelerator.wait_for_everyone()


def prepare_data(config, tokenizer, objective, has_reference: bool):
    """(train, eval or None) as `TokenizedDataset`s with the extras ``objective`` needs."""
    c = config
    train = transform(c, read_split(c, c.data, "train"), "train")
    evals = transform(c, read_split(c, c.eval_data, "eval"), "eval") if c.eval_data else []
    if not evals and c.eval_split > 0:
        train, evals = split_by_prompt(train, c.eval_split, c.seed)
    for records, split in ((train, "train"), (evals, "eval")):
        if records:
            kind, k_min, k_max, dim = data_shape(records)
            objective.check_data(kind, k_min, k_max, has_reference, score_dim=dim)
            check_pairs(records, objective, split)
    tok = tokenize_config(c)
    build = TokenizedDataset.build
    train_data = build(train, tokenizer, tok, "train data", objective.extras, c.seed, on_bad_row=c.on_bad_row)
    eval_data = (build(evals, tokenizer, tok, "eval data", objective.extras, c.seed, on_bad_row=c.on_bad_row)
                 if evals else None)
    return train_data, eval_data


def tokenize_config(config) -> TokenizeConfig:
    """How a run tokenizes its records (lengths, chat template)."""
    return TokenizeConfig(config.max_length, config.max_prompt_length, chat_template=config.chat_template,
                          chat_template_kwargs=config.chat_template_kwargs)


def check_pairs(records: list[PreferenceRecord], objective, split: str) -> Counter:
    """Pairs a pairwise term of ``objective`` learns nothing from: ``tied`` (equal ranks or scores, masked out
    of the loss) and ``identical`` (chosen and rejected are the same text). Counted and logged at start-up;
    when no pair is left, the run stops here (`DataError`) instead of training at loss 0."""
    pairwise = [t.spec.name for t in objective.terms if t.spec.min_responses == t.spec.max_responses == 2]
    found = pair_problems(records) if pairwise else Counter()
    if not found:
        return found
    what = {"tied": "tied (equal ranks or scores: masked out of the loss)",
            "identical": "with the same text as chosen and rejected"}
    counts = ", ".join(f"{n} {what[k]}" for k, n in found.items())
    names = "/".join(pairwise)
    if sum(found.values()) == len(records):
        raise DataError(f"{split} data: every one of the {len(records)} pairs gives {names} no preference signal "
                        f"({counts}); check the ranks/scores of the data")
    logger.warning("%s data: %d of %d pairs give %s no preference signal: %s", split, sum(found.values()),
                   len(records), names, counts)
    return found
