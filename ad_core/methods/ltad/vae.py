"""LTAD phase 1: a conditional VAE over patch-feature maps that synthesises features for tail classes.

The paper (project-page figure caption) learns "a VAE-style decoder for feature augmentation conditioned on a
learned pseudo class name"; its architecture is not public. Ours is a small convolutional conditional VAE on
the feature map [D, h, w] of one image, so a synthetic sample is a whole, spatially coherent feature map that
the transformer reconstruction module can take as a token sequence:

- condition c = the text embedding of the class prompt with the learned pseudo class name (frozen after the
  names are learned), added as a per-channel bias (one linear map for the encoder, one for the decoder);
- encoder q(z | x, c): 1x1 conv D -> hidden, GELU, 3x3 conv stride 2, GELU, 1x1 conv -> (mu, log var) of a
  latent grid [latent, ceil(h/2), ceil(w/2)];
- decoder p(x | z, c): 1x1 conv latent -> hidden (+ condition), bilinear upsampling to (h, w), 3x3 conv, GELU,
  1x1 conv -> D;
- loss = reconstruction + beta * KL, both per feature-map position and averaged over positions and the batch.
  Reconstruction is the Gaussian negative log-likelihood up to a constant, ||x - x_hat||^2 / (2 sigma^2), with
  sigma^2 = `noise_var`, the mean per-dimension variance of the training features (set by the caller), so that
  beta = 1 is a proper ELBO whatever the feature scale.
Synthesis draws z ~ N(0, temperature^2 I) on the latent grid ("prior", the decoder generates from the class
name alone) or around the posterior of a real map of the class ("posterior").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureVAE(nn.Module):
    def __init__(self, dim: int, cond_dim: int, hidden: int = 256, latent: int = 32):
        super().__init__()
        self.dim, self.latent = dim, latent
        self.enc_in = nn.Conv2d(dim, hidden, 1)
        self.enc_cond = nn.Linear(cond_dim, hidden)
        self.enc = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, 2 * latent, 1))
        self.dec_in = nn.Conv2d(latent, hidden, 1)
        self.dec_cond = nn.Linear(cond_dim, hidden)
        self.dec = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, dim, 1))
        self.register_buffer("noise_var", torch.tensor(1.0))

    @staticmethod
    def latent_size(size: tuple[int, int]) -> tuple[int, int]:
        return (size[0] + 1) // 2, (size[1] + 1) // 2

    def encode(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc_in(x) + self.enc_cond(cond)[:, :, None, None]
        mu, logvar = self.enc(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, cond: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = self.dec_in(z) + self.dec_cond(cond)[:, :, None, None]
        h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        return self.dec(h)

    def losses(
        self, x: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, KL) of a batch of maps x [B, D, h, w] with conditions [B, cond_dim]."""
        mu, logvar = self.encode(x, cond)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = self.decode(z, cond, tuple(x.shape[-2:]))
        rec = ((recon - x) ** 2).sum(1).mean() / (2 * self.noise_var)
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(1).mean()
        return rec, kl

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        size: tuple[int, int],
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        around: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Synthetic maps [N, D, h, w] for conditions [N, cond_dim]: from the prior, or around the posterior of
        the real maps `around` [N, D, h, w]."""
        if around is None:
            shape = (cond.shape[0], self.latent, *self.latent_size(size))
            z = temperature * torch.randn(shape, generator=generator).to(cond.device)
        else:
            mu, logvar = self.encode(around, cond)
            eps = torch.randn(mu.shape, generator=generator).to(mu.device)
            z = mu + temperature * torch.exp(0.5 * logvar) * eps
        return self.decode(z, cond, size)
