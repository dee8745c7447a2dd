"""Near ties: where half-precision drift may swap the top pick without anything being wrong.

Two sides whose logits differ by at most δ everywhere can disagree on the argmax only where the
leader's lead is at most 2δ. So with a tolerance of δ for a dtype pair (bfloat16 vs float32), a
top-1 disagreement or a greedy divergence at a lead ≤ 2δ is a near tie: reported, never a
failure. A decisive disagreement (a larger lead) still fails the check. Only the first
divergence of a greedy continuation can be judged: after it the two contexts differ.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from app.verify.forward import prompt_logits


def assess(
    model: Any,
    device: torch.device,
    inputs: list[list[int]],
    per_prompt: list[dict[str, Any]],
    logits: tuple[list[torch.Tensor], list[torch.Tensor]],
    margin: float,
) -> dict[str, Any]:
    """Mark the near ties of every prompt's entry; the aggregate metrics for the verdict.

    `logits` is (subject's, reference's) per prompt; each entry holds both continuations.
    """
    agreements = []
    for ids, entry, mine, theirs in zip(inputs, per_prompt, *logits, strict=True):
        ties = top1_near_ties(mine, theirs, margin)
        entry["top1_near_tie_positions"] = ties
        agreeing = int((mine.argmax(-1) == theirs.argmax(-1)).sum()) + len(ties)
        agreements.append(agreeing / max(1, mine.shape[0]))
        step = entry["first_divergent_step"]
        if step is not None and step < min(
            len(entry["subject_continuation"]), len(entry["reference_continuation"])
        ):
            entry["greedy_divergence_lead"] = greedy_lead(model, device, ids, entry, step)
    divergent = [entry for entry in per_prompt if entry["first_divergent_step"] is not None]
    at_near_ties = [
        entry["index"]
        for entry in divergent
        if entry.get("greedy_divergence_lead", math.inf) <= margin
    ]
    return {
        "top1_agreement_beyond_near_ties": min(agreements, default=1.0),
        "top1_near_ties": sum(len(entry["top1_near_tie_positions"]) for entry in per_prompt),
        "greedy_near_tie_prompts": at_near_ties,
        "greedy_ok": len(at_near_ties) == len(divergent),
    }


def top1_near_ties(subject: torch.Tensor, reference: torch.Tensor, margin: float) -> list[int]:
    """Positions whose top-1 picks differ where the reference leads the subject's pick by at
    most `margin`."""
    mine, theirs = subject.argmax(-1), reference.argmax(-1)
    lead = reference.gather(-1, theirs[:, None]) - reference.gather(-1, mine[:, None])
    tied = (mine != theirs) & (lead[:, 0] <= margin)
    return [int(position) for position in tied.nonzero().flatten()]


def greedy_lead(
    model: Any, device: torch.device, prompt: list[int], entry: dict[str, Any], step: int
) -> float:
    """How far the subject's own pick leads the reference's at the first divergence, in the
    subject's logits after the prompt and the continuation both sides share."""
    shared = entry["subject_continuation"][:step]
    context = prompt + shared
    last = prompt_logits(model, [context], device)[0][-1]
    mine, theirs = entry["subject_continuation"][step], entry["reference_continuation"][step]
    return float(last[mine] - last[theirs])
