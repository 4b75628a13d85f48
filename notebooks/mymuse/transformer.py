"""The masked transformer, written in notebook 05 (Muse §2.3): token and 2-D position embeddings, pre-norm blocks of
bidirectional self-attention, cross-attention to the projected text and an MLP, then a head over the K codes.
Its parameters have the names and shapes of minimuse's MaskedTransformer, so it loads the shipped weights, and it
is built in the same order, so the same seed gives the same initial weights."""
import math
from collections import OrderedDict

import torch
import torch.nn as nn


def split_heads(x, H):                      # (B, N, D) -> (B, H, N, D / H)
    B, N, D = x.shape
    return x.view(B, N, H, D // H).transpose(1, 2)


def attend(q, k, v, key_mask=None):         # q (B, H, L, Dh); k, v (B, H, N, Dh); key_mask (B, N), True at real keys
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])             # (B, H, L, N)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)            # (B, H, L, Dh) -> (B, L, D)


class SelfAttention(nn.Module):
    def __init__(self, D, H):
        super().__init__()
        self.H, self.qkv, self.out = H, nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x):                   # (B, L, D); no mask: every image token sees every other one
        q, k, v = (split_heads(y, self.H) for y in self.qkv(x).chunk(3, dim=-1))
        return self.out(attend(q, k, v))


class CrossAttention(nn.Module):
    def __init__(self, D, H):
        super().__init__()
        self.H, self.q, self.kv, self.out = H, nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, D)

    def forward(self, x, t, t_mask):        # queries from the image x (B, L, D), keys and values from the text t (B, T, D)
        k, v = (split_heads(y, self.H) for y in self.kv(t).chunk(2, dim=-1))
        return self.out(attend(split_heads(self.q(x), self.H), k, v, t_mask))  # padded text gets weight 0


class Block(nn.Module):
    def __init__(self, D, H, hidden):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn, self.cross = SelfAttention(D, H), CrossAttention(D, H)
        self.mlp = nn.Sequential(OrderedDict(fc=nn.Linear(D, hidden), gelu=nn.GELU(), out=nn.Linear(hidden, D)))

    def forward(self, x, t, t_mask):        # pre-norm residual sublayers
        x = x + self.attn(self.ln1(x))
        x = x + self.cross(self.ln2(x), t, t_mask)
        return x + self.mlp(self.ln3(x))


class MyTransformer(nn.Module):
    def __init__(self, K, grid, text_dim, D, depth, H, mlp_ratio=4.0):
        super().__init__()
        (h, w), self.grid, self.mask_id = grid, tuple(grid), K   # [MASK] is the one id past the K codes
        self.tok_emb = nn.Embedding(K + 1, D)
        self.row_emb, self.col_emb = nn.Parameter(torch.zeros(h, D)), nn.Parameter(torch.zeros(w, D))
        self.text_proj, self.text_norm = nn.Linear(text_dim, D), nn.LayerNorm(D)
        self.blocks = nn.ModuleList(Block(D, H, int(mlp_ratio * D)) for _ in range(depth))
        self.ln_f, self.head = nn.LayerNorm(D), nn.Linear(D, K)
        for m in self.modules():            # GPT-2's init: N(0, 0.02), biases 0
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():  # residual outputs scaled down: the stream's variance stays ~1 at any depth
            if name.endswith("out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(3 * depth))
        nn.init.normal_(self.row_emb, std=0.02)
        nn.init.normal_(self.col_emb, std=0.02)

    @classmethod
    def from_config(cls, cfg):              # a minimuse Config: the same sizes as the package's model
        t = cfg.transformer
        return cls(cfg.tokenizer.codebook_size, cfg.grid, cfg.text.text_dim, t.width, t.depth, t.heads, t.mlp_ratio)

    def forward(self, ids, text, text_mask):  # ids (B, L) or (B, h, w), [MASK] = K; text (B, T, E); text_mask (B, T)
        B = ids.shape[0]
        pos = (self.row_emb[:, None, :] + self.col_emb[None, :, :]).flatten(0, 1)  # (h, w, D) -> (L, D)
        x = self.tok_emb(ids.reshape(B, -1)) + pos                                   # (B, L, D)
        t = self.text_norm(self.text_proj(text))                                     # (B, T, D), once for all blocks
        for block in self.blocks:
            x = block(x, t, text_mask.bool())
        return self.head(self.ln_f(x))                                               # (B, L, K) logits
