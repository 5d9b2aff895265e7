"""An independent PyTorch twin of the feed-forward-only ViT, for parity tests only.

Written the way the paper's released code is: (B, T, D) activations, explicit transposes
around the patch feed-forward, a convolution for the patch embedding, autograd for every
gradient.  Parameter names equal the released checkpoint's, so minimlp's state dict loads
into it by name.  PyTorch is an optional test dependency; the package never imports it.
"""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, tokens: int, patch_hidden: int) -> None:
        super().__init__()
        self.mlp1, self.norm1 = Mlp(dim, 4 * dim), nn.LayerNorm(dim, eps=1e-6)
        self.mlp2, self.norm2 = Mlp(tokens, patch_hidden), nn.LayerNorm(tokens, eps=1e-6)

    def forward(self, x):
        x = x + self.mlp1(self.norm1(x))
        x = x.transpose(-2, -1)
        x = x + self.mlp2(self.norm2(x))
        return x.transpose(-2, -1)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(chans, dim, kernel_size=patch, stride=patch)


class PosEncoding(nn.Module):
    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, grid, grid))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, dim))


class TwinFFViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12,
                 patch_mlp_dim=None) -> None:
        super().__init__()
        grid = img_size // patch_size
        tokens = grid * grid + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_encoding = PosEncoding(grid, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, tokens, patch_mlp_dim or 4 * tokens) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        B = x.shape[0]
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        pos = self.pos_encoding.pos_embed.flatten(2).transpose(1, 2)
        x = x + torch.cat([self.pos_encoding.cls_pos_embed, pos], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])
