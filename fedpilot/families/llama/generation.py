"""Instruction tuning (``task: instruction``) on the Llama family: the model learns to write each example's
response to its prompt; evaluation generates responses greedily and scores them.

**Format.** With a chat template (SmolLM2-Instruct has one) the prompt is one user turn rendered by the
template with the generation prompt (``<|im_start|>assistant``), and the response is the assistant's turn
closed by the end-of-turn token (the tokenizer's ``eos_token``, ``<|im_end|>`` for SmolLM2). A tokenizer
without a template gets ``<bos><prompt>\\n\\nResponse: <response><eos>``. The response keeps at most
``data.max_response_length`` tokens, its end token included; the prompt's text is cut so that the
template and ``max_length - max_response_length`` tokens fit, never the template itself.

**Padding, not packing.** Each example is one left-padded row of ``max_length`` tokens (prompt then response),
so every response ends at the last position and the loss reads only the last ``max_response_length + 1``
positions' logits (``logits_to_keep``): a (B, R + 1, V) tensor, not (B, T, V). Packing several short examples
per row would save the padded positions' compute, but it changes a step's memory with the data (the cost
model prices fixed shapes) and needs attention masks across packed examples; padded rows keep every step's
shape, and so its memory, fixed.

**Loss** on the response tokens only: exactly the causal-LM loss with every prompt and padding position masked
(-100), averaged over the batch's response tokens (``tests/test_instruction.py`` checks it against
transformers' own loss). ``forward`` returns, per row, the summed negative log-likelihood of its response
tokens and their count, so the mean over tokens of a batch, or of a whole split, is exact.

**Evaluation**: the token-mean loss and its perplexity on the split, then greedy decoding from each prompt
(at most ``max_response_length`` new tokens, stopping at the end token) scored against the reference
response by ROUGE-L F1 (``rouge_l``, the metric a run reports first) and exact match
(:mod:`fedpilot.families.text_metrics`).

The examples' labels are their groups (e.g. the topic): they stratify and skew the data, the model never sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedpilot.families.llama.runtime import LlamaInstruct, _QuietTransformers
from fedpilot.families.text_metrics import exact_match, rouge_l

IGNORE = -100
MARK = "\x00PROMPT\x00"
PLAIN_CUE = "\n\nResponse:"


def prompt_frame(tokenizer: Any) -> tuple[list[int], list[int], bool]:
    """Token ids before and after the prompt's text, and whether the response is a chat turn (no leading space)."""
    template = getattr(tokenizer, "chat_template", None)
    if template:
        with _QuietTransformers():
            text = tokenizer.apply_chat_template([{"role": "user", "content": MARK}], add_generation_prompt=True, tokenize=False)
        before, after = text.split(MARK)
        ids = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"] if t else []  # noqa: E731
        return ids(before), ids(after), True
    bos = [int(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []
    return bos, tokenizer(PLAIN_CUE, add_special_tokens=False)["input_ids"], False


def end_token(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token to end a response with; give the checkpoint's tokenizer one")
    return int(tokenizer.eos_token_id)


def pad_token(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


class LlamaGeneration(LlamaInstruct):
    primary_metric = "rouge_l"

    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}

    def tokenizer(self, spec: Any) -> Any:
        """The tokenizer of ``spec``, loaded once per process (evaluation decodes every round)."""
        key = str(spec.path()) if spec.model_type is not None else spec.name
        if key not in self._tokenizers:
            self._tokenizers[key] = self.load_tokenizer(spec)
        return self._tokenizers[key]

    def encode_task(self, tokenizer: Any, texts: Sequence[str], label_names: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        raise TypeError("task: instruction encodes prompts with their responses: call encode_corpus")

    def encode_corpus(self, tokenizer: Any, corpus: Any, max_length: int, max_response_length: int) -> dict[str, torch.Tensor]:
        """Left-padded prompt + response rows (``input_ids``, ``attention_mask``), the next-token targets of the
        last ``max_response_length + 1`` positions (``targets``, -100 where no response token follows), and the
        left-padded prompts alone for generation (``prompt_ids``, ``prompt_mask``)."""
        if corpus.responses is None:
            raise ValueError("task: instruction needs prompts with responses (data.prompt_column and data.response_column)")
        before, after, chat = prompt_frame(tokenizer)
        end, pad = end_token(tokenizer), pad_token(tokenizer)
        prompt_room = max_length - max_response_length
        room = prompt_room - len(before) - len(after)
        if room < 1:
            raise ValueError(
                f"max_length {max_length} leaves {prompt_room} prompt tokens after max_response_length {max_response_length}; "
                f"the prompt template alone needs {len(before) + len(after) + 1}"
            )
        bodies = tokenizer(list(corpus.texts), add_special_tokens=False)["input_ids"]
        answers = tokenizer([r.strip() if chat else " " + r.strip() for r in corpus.responses], add_special_tokens=False)["input_ids"]
        n, keep = len(bodies), max_response_length + 1
        input_ids = torch.full((n, max_length), pad, dtype=torch.long)
        attention_mask = torch.zeros((n, max_length), dtype=torch.long)
        targets = torch.full((n, keep), IGNORE, dtype=torch.long)
        prompt_ids = torch.full((n, prompt_room), pad, dtype=torch.long)
        prompt_mask = torch.zeros((n, prompt_room), dtype=torch.long)
        for row, (body, answer) in enumerate(zip(bodies, answers, strict=True)):
            prompt = before + body[:room] + after
            response = answer[: max_response_length - 1] + [end]
            ids = prompt + response
            input_ids[row, max_length - len(ids):] = torch.tensor(ids)
            attention_mask[row, max_length - len(ids):] = 1
            targets[row, keep - 1 - len(response): keep - 1] = torch.tensor(response)  # the logit before each response token
            prompt_ids[row, prompt_room - len(prompt):] = torch.tensor(prompt)
            prompt_mask[row, prompt_room - len(prompt):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets,
                "prompt_ids": prompt_ids, "prompt_mask": prompt_mask}

    def forward(self, model: nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2): each row's summed negative log-likelihood of its response tokens, and their count."""
        mask, targets = features["attention_mask"], features["targets"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=features["input_ids"], attention_mask=mask, position_ids=positions, use_cache=False,
            logits_to_keep=targets.shape[1],
        )
        logits = out.logits.float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none")
        counted = (targets != IGNORE)
        return torch.stack([nll.view(targets.shape).sum(1), counted.sum(1).to(nll.dtype)], dim=1)

    def loss(self, output: torch.Tensor, labels: torch.Tensor, reduction: str = "mean", offset: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the batch's response tokens (``mean``), their sum (``sum``), or each row's mean (``none``).
        ``labels`` are the examples' groups and play no part; a logit adjustment has no meaning here."""
        if offset is not None:
            raise ValueError("train.logit_adjustment applies to classification; set it to 0 for task: instruction")
        nll, count = output[:, 0], output[:, 1]
        if reduction == "mean":
            return nll.sum() / count.sum().clamp(min=1)
        if reduction == "sum":
            return nll.sum()
        return nll / count.clamp(min=1)

    def normaliser(self, split: Any, rows: torch.Tensor) -> float:
        return float((split.features["targets"][rows] != IGNORE).sum().clamp(min=1))

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def metrics(self, predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Token-mean loss and perplexity from :meth:`forward`'s rows (what :meth:`evaluate` reports besides generation)."""
        loss = float(predicted[:, 0].sum() / max(predicted[:, 1].sum(), 1))
        return {"token_loss": loss, "perplexity": float(np.exp(loss))}

    def generate(self, model: Any, features: Mapping[str, torch.Tensor], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of ``features``' prompts (new tokens only, the end token and what follows dropped)."""
        tokenizer = self.tokenizer(model.spec)
        end = end_token(tokenizer)
        out = model.peft.generate(
            input_ids=features["prompt_ids"], attention_mask=features["prompt_mask"], max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, pad_token_id=pad_token(tokenizer), eos_token_id=end, use_cache=True,
        )
        continuations = []
        for row in out[:, features["prompt_ids"].shape[1]:].tolist():
            continuations.append(row[: row.index(end)] if end in row else row)
        return continuations

    def evaluate(self, model: Any, split: Any, batch_size: int) -> dict[str, float]:
        """Token-mean loss and perplexity of the responses, then ROUGE-L and exact match of greedy generations."""
        tokenizer = self.tokenizer(model.spec)
        rows, generated, references = [], [], []
        with torch.no_grad():
            for start in range(0, len(split), batch_size):
                features, _ = split.batch(slice(start, start + batch_size), model.device)
                rows.append(self.forward(model.peft, features).cpu())
                targets = features["targets"]
                generated += self.generate(model, features, targets.shape[1] - 1)
                references += [[t for t in row if t != IGNORE][:-1] for row in targets.tolist()]  # the end token dropped
        predicted = torch.cat(rows).double().numpy()
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        truths = tokenizer.batch_decode(references, skip_special_tokens=True)
        scores = [rouge_l(t, r) for t, r in zip(texts, truths, strict=True)]
        matches = [exact_match(t, r) for t, r in zip(texts, truths, strict=True)]
        metrics = self.metrics(predicted, split.labels.numpy())
        return {"loss": metrics["token_loss"], "perplexity": metrics["perplexity"], "rouge_l": float(np.mean(scores)),
                "exact_match": float(np.mean(matches)), "generated_tokens": float(np.mean([len(g) for g in generated]))}


RUNTIME = LlamaGeneration()
