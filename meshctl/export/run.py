"""Export a trained run: its model (any family, `meshctl.models.export`), the tokenizer of its data
manifest, a generation config and a model card, written into a temp directory and renamed into place,
so DIR holds a whole export or is left as it was. `--push REPO` uploads the directory afterwards."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from meshctl.errors import BadInput, MeshctlError


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: is a file; give a directory to export into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BadInput(f"--out {out}: directory is not empty; give a new or empty directory, or --force to replace it")


def check_repo(repo: str) -> None:
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise BadInput("--push: needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        if "/" not in repo:
            raise HFValidationError("no owner")
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise BadInput(f"--push {repo!r}: not a Hugging Face repo id ({str(exc).splitlines()[0]}); "
                       "give owner/name, e.g. me/mesh-160m") from None


def write_tokenizer(loaded: Any, out: Path) -> None:
    """The run's tokenizer.json, with the config `AutoTokenizer` needs (end-of-document as eos and pad)."""
    from meshctl.data.manifest import load_manifest

    data = Path(loaded.spec.data.path)
    shutil.copyfile(data / load_manifest(data).tokenizer.path, out / "tokenizer.json")
    eod = loaded.tokenizer.id_to_token(loaded.eod_token_id)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eod, "bos_token": eod, "pad_token": eod,
              "model_max_length": loaded.model.spec.block_size, "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def generation_config(loaded: Any) -> dict[str, Any]:
    """Greedy by default, stopping at end-of-document; the padded embedding rows beyond the tokenizer's
    ids are suppressed, as `meshctl sample` never produces them."""
    eod, padded = loaded.eod_token_id, loaded.model.spec.padded_vocab_size
    vocab = loaded.tokenizer.get_vocab_size(with_added_tokens=True)
    return {"bos_token_id": eod, "eos_token_id": eod, "pad_token_id": eod, "do_sample": False,
            "suppress_tokens": list(range(vocab, padded))}


def fix_special_ids(out: Path, eod: int) -> None:
    config = json.loads((out / "config.json").read_text())
    config.update(bos_token_id=eod, eos_token_id=eod, pad_token_id=eod)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def export_run(ref: str, out: str | Path, *, results_dir: str | Path, force: bool = False,
               push: str | None = None) -> dict[str, Any]:
    """Export run `ref` (directory, id or id prefix) into `out`; returns what was written (and pushed)."""
    from meshctl.analysis.loading import load_run, resolve_run
    from meshctl.export.card import model_card
    from meshctl.models.export import export_model
    from meshctl.train.rundir import read_final, read_metrics

    out = Path(out)
    run_dir = resolve_run(ref, results_dir)
    check_out(out, force)
    if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
        raise BadInput(f"--out {out}: holds the run being exported ({run_dir}); give a directory outside it")
    if push is not None:
        check_repo(push)
    loaded = load_run(run_dir)
    family = loaded.model.spec.family
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_model(loaded.model, tmp)
        fix_special_ids(tmp, loaded.eod_token_id)
        write_tokenizer(loaded, tmp)
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(loaded), indent=2) + "\n")
        card = model_card(run_dir.name, loaded.spec, read_final(run_dir), read_metrics(run_dir), family != "vanilla")
        (tmp / "README.md").write_text(card)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():  # empty, or --force: moved aside, so DIR is never half-written
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"run_id": run_dir.name, "out": str(out), "family": family, "step": loaded.step,
              "architecture": "GPTNeoXForCausalLM" if family == "vanilla" else "MeshctlForCausalLM",
              "files": sorted(p.name for p in out.iterdir()), "pushed": None}
    if push is not None:
        result["pushed"] = upload(out, push, run_dir.name)
    return result


def upload(out: Path, repo: str, run_id: str) -> str:
    """Create the model repo if needed and upload the directory; a failure is exit 1, the export stays."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, repo_type="model", exist_ok=True)
        commit = api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="model",
                                   commit_message=f"meshctl export of run {run_id}")
    except Exception as exc:  # offline, no token, no permission: the hub's reason in one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MeshctlError(f"--push {repo}: upload failed ({type(exc).__name__}: {reason}); the export is in {out}") from None
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo}"
