"""Decoder finetuning, written in notebook 07 (Muse §2.5): a larger decoder learns to draw the same tokens better."""
import torch


def decoder_loss(tokenizer, images):
    """The finetuning objective for images (B, 3, H, W) in [0, 1]. The encoder and codebook are frozen, so every image
    keeps its tokens and neither transformer needs retraining; only the decoder learns, from the reconstruction loss
    (L1 or MSE, as the tokenizer's config says) of what it draws from those tokens."""
    with torch.no_grad():                                         # no gradient reaches the encoder or the codebook
        codes = tokenizer.quantizer.lookup(tokenizer.encode(images))  # (B, C, h, w) the frozen tokens' codes
    recon = (tokenizer.decoder(codes) + 1) / 2                    # (B, 3, H, W), unclamped: the gradient stays alive
    err = recon - images
    return err.abs().mean() if tokenizer.config.recon_loss == "l1" else err.pow(2).mean()
