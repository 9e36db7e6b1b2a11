"""Data tools: look at preference data and shape it before training (``alignkit data SUBCOMMAND``).

    from alignkit.data import read_records
    from alignkit.data.tools import convert, inspect_data, dedup, select, split, synthesize

    convert("hh-rlhf.jsonl", "prefs.jsonl")                # HH / UltraFeedback / TRL / OpenAI / CSV -> alignkit
    records = read_records("prefs.jsonl").records
    print(format_table(inspect_data(records).report))     # lengths, labels, length bias, duplicates
    kept = dedup(records, threshold=0.8).kept             # exact + MinHash near-duplicate prompts
    subset = select(kept, method="zipfit", targets=target_texts, fraction=0.2).kept
    parts = split(subset, eval_fraction=0.1, seed=0)      # by prompt: parts.train, parts.eval

Pairs from ranked or scored lists are the ``pairs`` transform (`alignkit.data.transforms.pairs`).
Guide: ``docs/data_tools.md``.
"""

from alignkit.data.tools.converters import FORMATS, ConvertResult, convert, detect_format, read_converted
from alignkit.data.tools.duplicates import DedupResult, MinHash, dedup, jaccard, lsh_bands, shingles
from alignkit.data.tools.inspection import Inspection, format_table, inspect_data
from alignkit.data.tools.selection import Selection, compressed_size, ncd, select, zipfit_scores
from alignkit.data.tools.splitting import Split, split
from alignkit.data.tools.synthesis import Synthesis, pre_query_template, synthesize
from alignkit.data.transforms_pairs import pairs

__all__ = [
    "FORMATS",
    "ConvertResult",
    "DedupResult",
    "Inspection",
    "MinHash",
    "Selection",
    "Split",
    "Synthesis",
    "compressed_size",
    "convert",
    "dedup",
    "detect_format",
    "format_table",
    "inspect_data",
    "jaccard",
    "lsh_bands",
    "ncd",
    "pairs",
    "pre_query_template",
    "read_converted",
    "select",
    "shingles",
    "split",
    "synthesize",
    "zipfit_scores",
]
