"""Offline lm-eval tasks built from the held-out split of a prepared corpus (no Hugging Face hub).

Three tasks, written as JSONL data plus lm-eval task YAMLs (`dataset_path: json`, absolute data_files;
reference/offline-data.md §3):

- `meshctl_cloze` (loglikelihood, LAMBADA-style): a passage of up to `context_words` words that stops
  before the last word of a sentence; the target is that word. Metrics: acc (the word is the greedy
  continuation) and perplexity of the word, as lm-eval's lambada_openai.
- `meshctl_cloze_mc` (multiple_choice, 4 options): the same kind of passages in groups of four with
  distinct target words; every passage of a group offers the group's four words, in the same order.
  Each word is right in exactly one of the four passages that offer it, so any scorer that ignores the
  passage (unigram frequency, word length, an untrained model) gets exactly one of four right: 25% is
  chance exactly, for acc and acc_norm alike, and accuracy above it comes from reading the passage.
- `meshctl_bpb` (loglikelihood_rolling): held-out documents; word_perplexity, byte_perplexity, bits_per_byte.

The same prepared directory and settings always give the same files (seeded), and the files carry the
source manifest's tokenizer hash, so results can be traced to their data.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshctl.errors import BadInput

OFFLINE_TASKS = ("meshctl_cloze", "meshctl_cloze_mc", "meshctl_bpb")
N_CHOICES = 4

# A word of 3+ letters that ends a sentence: the cloze target.
_TARGET = re.compile(r"(?<=\s)([A-Za-z][A-Za-z'-]*[A-Za-z])(?=[.!?][\"')\]]?(?:\s|$))")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class OfflineTaskSettings:
    split: str = "validation"
    seed: int = 0
    context_words: int = 64  # words of passage before the target (LAMBADA passages average ~75)
    min_context_words: int = 16
    max_items: int = 1000  # cloze passages (the multiple-choice task uses the same number)
    max_documents: int = 500  # documents for bits-per-byte
    max_tokens: int = 2_000_000  # held-out tokens read at most


def held_out_documents(data_dir: str | Path, split: str = "validation", max_tokens: int = 2_000_000) -> list[str]:
    """The split's documents as text: its tokens (up to max_tokens) cut at end-of-document and decoded."""
    from meshctl.data.manifest import load_manifest
    from meshctl.data.tokenizer import load_tokenizer

    manifest = load_manifest(data_dir)
    tokenizer = load_tokenizer(Path(data_dir) / manifest.tokenizer.path)
    ds = manifest.dataset(data_dir, split)  # its shards and entries, for imported data too
    tokens = np.asarray(ds.tokens[: max_tokens], dtype=np.int64)
    cuts = np.flatnonzero(tokens == manifest.tokenizer.eod_token_id)
    docs, start = [], 0
    for end in [*cuts.tolist(), len(tokens)]:
        if end > start:
            text = tokenizer.decode(tokens[start:end].tolist())
            if text.strip():
                docs.append(text)
        start = end + 1
    return docs


def cloze_passages(docs: list[str], settings: OfflineTaskSettings) -> list[dict[str, Any]]:
    """Every sentence-final word with enough words before it, as {context, target, doc}, shuffled (seeded)."""
    items = []
    for d, text in enumerate(docs):
        words = [m.start() for m in _WORD.finditer(text)]
        for m in _TARGET.finditer(text):
            before = np.searchsorted(words, m.start())  # words wholly before the target
            if before < settings.min_context_words:
                continue
            start = words[max(before - settings.context_words, 0)]
            context = text[start : m.start()].rstrip()
            items.append({"context": context, "target": m.group(1), "doc": d})
    random.Random(settings.seed).shuffle(items)
    return items[: settings.max_items]


def multiple_choice(items: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Groups of N_CHOICES passages with distinct targets (case-insensitive); each passage's choices are
    its group's targets in one shared order, its label the index of its own."""
    rng = random.Random(seed)
    groups: list[list[dict[str, Any]]] = []
    open_groups: list[list[dict[str, Any]]] = []
    for item in items:
        word = item["target"].lower()
        group = next((g for g in open_groups if all(o["target"].lower() != word for o in g)), None)
        if group is None:
            group = []
            open_groups.append(group)
        group.append(item)
        if len(group) == N_CHOICES:
            open_groups.remove(group)
            groups.append(group)
    out = []
    for g, group in enumerate(groups):
        choices = [item["target"] for item in group]
        rng.shuffle(choices)
        for item in group:
            out.append({"context": item["context"], "choices": choices, "label": choices.index(item["target"]),
                        "group": g})
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def _task_config(name: str, data_file: Path, source: dict[str, Any]) -> dict[str, Any]:
    common = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.absolute())}},
        "test_split": "test",
        "metadata": {"version": 1.0, "meshctl": source},
    }
    if name == "meshctl_cloze":
        return {**common, "output_type": "loglikelihood", "doc_to_text": "{{context}}",
                "doc_to_target": "{{' ' + target}}",
                "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    if name == "meshctl_cloze_mc":
        return {**common, "output_type": "multiple_choice", "doc_to_text": "{{context}}",
                "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
    return {**common, "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
            "metric_list": [{"metric": m, "aggregation": agg, "higher_is_better": False} for m, agg in (
                ("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
                ("bits_per_byte", "bits_per_byte"))]}


def build_offline_tasks(data_dir: str | Path, out_dir: str | Path,
                        settings: OfflineTaskSettings | None = None) -> dict[str, Path]:
    """Write `<task>.jsonl` and `<task>.yaml` for every offline task into out_dir; returns task -> yaml path.
    BadInput when the held-out split is too small for a task."""
    import yaml

    from meshctl.data.manifest import load_manifest

    settings = settings or OfflineTaskSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(data_dir)
    docs = held_out_documents(data_dir, settings.split, settings.max_tokens)
    passages = cloze_passages(docs, settings)
    mc = multiple_choice(passages, settings.seed)
    rows = {
        "meshctl_cloze": [{"context": p["context"], "target": p["target"]} for p in passages],
        "meshctl_cloze_mc": mc,
        "meshctl_bpb": [{"text": d} for d in docs[: settings.max_documents]],
    }
    for name, task_rows in rows.items():
        if not task_rows:
            raise BadInput(
                f"{data_dir} split {settings.split!r}: too little held-out text for {name} ({len(docs)} documents, "
                f"{len(passages)} cloze passages); prepare the data with a larger --val-fraction"
            )
    paths = {}
    for name, task_rows in rows.items():
        data_file = out_dir / f"{name}.jsonl"
        source = {"data_dir": str(Path(data_dir).absolute()), "tokenizer_sha256": manifest.tokenizer.sha256,
                  "settings": asdict(settings), "documents": len(docs), "items": len(task_rows),
                  "data_sha256": _write_jsonl(data_file, task_rows)}
        config = _task_config(name, data_file, source)
        yaml_path = out_dir / f"{name}.yaml"
        yaml_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        paths[name] = yaml_path
    return paths
