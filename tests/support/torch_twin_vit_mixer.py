"""Independent PyTorch twins of the comparison models, for parity tests only.

Written the way timm writes them: (B, N, C) activations, attention through
reshape/permute of one qkv projection, explicit transposes, a convolution for the patch
embedding, autograd for every gradient.  Parameter names are timm's, so minimlp's state
dicts load by name.  PyTorch is an optional test dependency; the package never imports it.
"""

from __future__ import annotations

import torch
from torch import nn

from support.torch_twin import Mlp


class Attention(nn.Module):
    """Multi-head self-attention over the middle axis of x (B, N, C)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, N, d)
        attn = (q @ k.transpose(-2, -1)) * (C // self.num_heads) ** -0.5
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, feature_mixer: str, feature_heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.feature_mixer = feature_mixer
        if feature_mixer == "mlp":
            self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)
        else:  # attention over features: the transposed sequence, each feature a token of T values
            self.norm2, self.feature_attn = nn.LayerNorm(tokens, eps=1e-6), Attention(tokens, feature_heads)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        if self.feature_mixer == "mlp":
            return x + self.mlp(self.norm2(x))
        x = x.transpose(1, 2)
        x = x + self.feature_attn(self.norm2(x))
        return x.transpose(1, 2)


class TwinViT(nn.Module):
    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        embed_dim=192,
        depth=12,
        num_heads=3,
        feature_mixer="mlp",
        feature_num_heads=1,
    ) -> None:
        super().__init__()
        tokens = (img_size // patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, tokens, feature_mixer, feature_num_heads) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class MixerBlock(nn.Module):
    def __init__(self, dim: int, patches: int) -> None:
        super().__init__()
        self.norm1, self.mlp_tokens = nn.LayerNorm(dim, eps=1e-6), Mlp(patches, dim // 2)
        self.norm2, self.mlp_channels = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class TwinMixer(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=512, depth=8) -> None:
        super().__init__()
        self.stem = PatchEmbed(patch_size, in_chans, embed_dim)
        patches = (img_size // patch_size) ** 2
        self.blocks = nn.ModuleList(MixerBlock(embed_dim, patches) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
