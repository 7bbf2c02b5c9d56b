"""Multiple-choice scoring: the correct choice must have the highest likelihood among the candidates.

Each candidate is scored by the mean log-probability of its tokens after the prompt, so that
longer candidates (HellaSwag's endings) are not penalised for their length. The prompt runs once,
with the KV cache on; each candidate's tokens after its first then run on a copy of that cache.
Label words of one token need no second pass at all. Routing decisions are thus made on the
prompt alone, and per-sequence routing keeps the prompt's choice for the candidate's tokens, as it
does for generated tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from seqr.training.batching import encode_pair
from seqr.training.data import ChoiceExample


@dataclass(frozen=True)
class EncodedChoices:
    """A prompt's token ids (1, prompt) and each candidate's token ids."""

    prompt_ids: torch.Tensor
    choice_ids: tuple[tuple[int, ...], ...]


@dataclass
class PromptState:
    """The output of the prompt pass: log-probabilities of the next token (vocab,) and the KV cache."""

    next_log_probs: torch.Tensor
    cache: object


def encode_choices(tokenizer: object, example: ChoiceExample, *, max_length: int) -> EncodedChoices:
    """Tokenise prompt and candidates separately; trim the prompt so the longest candidate fits."""
    choice_ids = tuple(tuple(tokenizer(choice, add_special_tokens=False)["input_ids"]) for choice in example.choices)
    longest = max(example.choices, key=lambda choice: len(tokenizer(choice, add_special_tokens=False)["input_ids"]))
    pair = encode_pair(tokenizer, example.prompt, longest, max_length=max_length)
    prompt_ids = torch.tensor([pair.input_ids[: pair.prompt_length]], dtype=torch.long)
    return EncodedChoices(prompt_ids=prompt_ids, choice_ids=choice_ids)


def run_prompt(model: nn.Module, encoded: EncodedChoices) -> PromptState:
    """Run the prompt with the KV cache on and return the next-token log-probabilities and the cache."""
    device = next(model.parameters()).device
    output = model(input_ids=encoded.prompt_ids.to(device), use_cache=True, logits_to_keep=1)
    return PromptState(next_log_probs=torch.log_softmax(output.logits[0, -1].float(), dim=-1).cpu(), cache=output.cache)


def choice_scores(model: nn.Module, encoded: EncodedChoices, state: PromptState) -> torch.Tensor:
    """Return each candidate's mean log-probability per token (choices,), continuing from the prompt."""
    device = next(model.parameters()).device
    scores = []
    for ids in encoded.choice_ids:
        total = float(state.next_log_probs[ids[0]])
        if len(ids) > 1:
            continuation = torch.tensor([ids[:-1]], dtype=torch.long, device=device)
            output = model(input_ids=continuation, cache=copy.deepcopy(state.cache), use_cache=True)
            log_probs = torch.log_softmax(output.logits[0].float(), dim=-1).cpu()  # (len - 1, vocab)
            total += float(log_probs.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).sum())
        scores.append(total / len(ids))
    return torch.tensor(scores)
