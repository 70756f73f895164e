"""The instruction-only pass of Cherry LLM's pre-experience step as its script runs it
(``cherry_seletion/data_analysis.py --mod pre``): one record at a time, a full Hugging Face
forward with ``labels = input_ids`` and all hidden states; the perplexity is ``exp(loss)``
and the sentence vector the mean of the last hidden state over the tokens. It takes the
token ids from :func:`car_engine.pre_experience.instruction_ids`, so it checks the engine's
batching, packed forward and fused loss on the same ids.
"""

from __future__ import annotations

import math

import numpy as np
import torch


@torch.inference_mode()
def reference_instruction_pass(model, token_ids: list[list[int]]
                               ) -> tuple[np.ndarray, np.ndarray]:
    """(perplexity [n], vectors [n, hidden]) at batch 1."""
    ppl, vectors = [], []
    for ids in token_ids:
        input_ids = torch.tensor([ids], device=model.device)
        out = model(input_ids, labels=input_ids, output_hidden_states=True)
        loss = float(out.loss)
        ppl.append(math.exp(loss) if math.isfinite(loss) else math.nan)
        vectors.append(out.hidden_states[-1][0].float().mean(dim=0).cpu().numpy())
    return np.array(ppl), np.stack(vectors)
