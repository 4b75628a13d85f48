"""The text side, written in notebook 03: a frozen LM's per-token states for a batch of prompts (Muse §2.1), padded
to the longest prompt, with zeros at the padding and a mask that is True at real tokens. Notebook 06 encodes its
prompts with it."""
import torch


@torch.no_grad()
def encode(prompts, tokenizer, lm, max_length=32):
    """(B, T, E) states and a (B, T) bool mask for B prompts, on the CPU; T is the longest prompt's token count."""
    batch = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = next(lm.parameters()).device
    hidden = lm(input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device)).last_hidden_state.cpu()  # (B, T, E)
    mask = batch["attention_mask"].bool()  # (B, T), True at real tokens
    return hidden * mask[..., None], mask  # zero the padded rows: nothing downstream may read them
