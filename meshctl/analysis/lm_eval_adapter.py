"""lm-evaluation-harness adapter: any meshctl model (vanilla, recursive, MeSH) as an lm-eval `LM`.

`MeshctlLM` subclasses `TemplateLM` (reference/pythia-data-flops.md §5), which tokenizes and splits
context from continuation; this class scores token lists and generates:

- `loglikelihood` / `_loglikelihood_tokens`: requests sorted by length, batched with right padding
  (causal attention: padding after a sequence never changes its logits), cut from the left to the
  model's block_size. Log-probs are log_softmax over the model's padded vocabulary, as in training's loss.
- `loglikelihood_rolling`: lm-eval's disjoint rolling windows of block_size tokens, each scored as above.
- `generate_until`: batched greedy or sampled decoding with the per-layer-application KV cache
  (`meshctl.analysis.generation`), cut at the first `until` string.

`n_loop` runs a recursive model at a test-time depth. Registered as lm-eval model `meshctl`
(`--model meshctl --model_args run=RUN_DIR,loops=3`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from meshctl.analysis.generation import generate

Request = tuple[tuple[str, str] | None, list[int], list[int]]


@register_model("meshctl")
class MeshctlLM(TemplateLM):
    def __init__(self, model: nn.Module, tokenizer: Any, eod_token_id: int, *, n_loop: int | None = None,
                 batch_size: int = 16, max_gen_toks: int = 256, device: str | torch.device | None = None,
                 seed: int = 1234) -> None:
        super().__init__()
        self.model = model.eval()
        self.hf_tokenizer = tokenizer
        self._eod = int(eod_token_id)
        self.spec = model.spec
        self.recursive = hasattr(model, "recurrence")
        if n_loop is not None and not self.recursive:
            raise ValueError(f"loops={n_loop}: a vanilla model has no loop to run at another depth")
        self.n_loop = n_loop
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self._device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self._device)
        self.generator = torch.Generator(device=self._device).manual_seed(seed)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> MeshctlLM:
        """`run=PATH[,loops=K][,batch_size=N][,device=cuda]`, as lm-eval's CLI passes `--model_args`."""
        from meshctl.analysis.loading import load_run

        args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        device = args.get("device") or extra.get("device") or "cpu"
        loaded = load_run(args["run"], device=device)
        loops = args.get("loops")
        return cls(loaded.model, loaded.tokenizer, loaded.eod_token_id, n_loop=int(loops) if loops else None,
                   batch_size=int(args.get("batch_size") or extra.get("batch_size") or 16), device=device)

    @property
    def eot_token_id(self) -> int:
        return self._eod

    @property
    def max_length(self) -> int:
        return self.spec.block_size

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.hf_tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.hf_tokenizer.decode(list(tokens))

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, n_loop=self.n_loop) if self.recursive else self.model(ids)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None, **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is the greedy one) per request, in request order."""
        limit = self.max_length
        prepared = []
        for ctx, cont in ((c, k) for _, c, k in requests):
            whole = (list(ctx) + list(cont))[-(limit + 1):]
            n_cont = min(len(cont), len(whole) - 1)
            prepared.append((whole[:-1], whole[-n_cont:] if n_cont else []))
        order = sorted(range(len(requests)), key=lambda i: -len(prepared[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        batch = override_bs or self.batch_size
        for b in range(0, len(order), batch):
            rows = order[b : b + batch]
            width = max(len(prepared[i][0]) for i in rows)
            ids = torch.full((len(rows), width), self._eod, dtype=torch.long)
            for r, i in enumerate(rows):
                inp = prepared[i][0]
                ids[r, : len(inp)] = torch.tensor(inp)
            logprobs = F.log_softmax(self._logits(ids.to(self._device)).float(), dim=-1)  # (rows, width, vocab)
            for r, i in enumerate(rows):
                inp, cont = prepared[i]
                if not cont:
                    results[i] = (0.0, True)
                    continue
                span = logprobs[r, len(inp) - len(cont) : len(inp)]  # (n_cont, vocab)
                target = torch.tensor(cont, device=span.device)
                score = float(span.gather(-1, target.unsqueeze(-1)).sum())
                greedy = bool((span.argmax(dim=-1) == target).all())
                results[i] = (score, greedy)
                request = requests[i][0]
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, (score, greedy))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows: list[Request] = []
        owner: list[int] = []
        for i, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1,
            )):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for i, (score, _) in zip(owner, scores):
            totals[i] += score
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Batches of requests with equal generation settings; text cut at the first `until` string."""
        outputs: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1])
            until = kwargs.get("until") or [self.tok_decode([self._eod])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            members = sorted(members, key=lambda i: -len(requests[i].args[0]))
            for b in range(0, len(members), self.batch_size):
                rows = members[b : b + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0]) or [self._eod] for i in rows]
                new = generate(self.model, prompts, max_new, temperature=temperature, n_loop=self.n_loop,
                               stop_ids=[self._eod], vocab_size=self.hf_tokenizer.get_vocab_size(with_added_tokens=True),
                               generator=self.generator if temperature > 0 else None)
                for i, tokens in zip(rows, new):
                    text = self.tok_decode(tokens)
                    for stop in until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    outputs[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return outputs  # type: ignore[return-value]
