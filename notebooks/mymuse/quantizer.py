"""Vector quantization, written in notebook 02: the nearest-code lookup with l2-normalized codes (ViT-VQGAN), and
the codebook's EMA update with dead-code restarts."""
import torch


def nearest_code(z, codebook):
    """Unit vectors z (N, C), unit codes (K, C) -> ids (N,): for unit vectors the largest cosine is the nearest code."""
    return (z @ codebook.t()).argmax(dim=-1)                     # (N, K) -> (N,)


@torch.no_grad()
def ema_update(embed, embed_sum, cluster_size, flat, ids, decay, dead_threshold):
    """One step of the codebook, in place. Each code moves to the running mean of the vectors assigned to it (online
    k-means); a code whose running count falls below `dead_threshold` restarts at a random vector of this batch.
    embed, embed_sum (K, C) and cluster_size (K,): the codebook's state; flat (N, C): unit encoder outputs; ids (N,)."""
    K = embed.shape[0]
    counts = torch.bincount(ids, minlength=K).float()             # (K,) assignments in this batch
    sums = torch.zeros_like(embed_sum).index_add_(0, ids, flat)   # (K, C) the sum of each code's vectors
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)        # running count
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)             # running sum
    embed.copy_(embed_sum / cluster_size.clamp(min=1e-6)[:, None])  # running mean
    dead = cluster_size < dead_threshold                          # (K,) codes that (almost) never win
    if dead.any():                                                # restart them where the data is
        pick = flat[torch.randint(len(flat), (int(dead.sum()),))]  # (n_dead, C)
        embed[dead], cluster_size[dead], embed_sum[dead] = pick, dead_threshold, pick * dead_threshold
