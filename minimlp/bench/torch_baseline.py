"""The PyTorch baseline for ``python -m minimlp.bench --compare torch``.

The same architecture as minimlp's FF-ViT, written the way the paper's released code is
(and the way a PyTorch user would write it): (B, T, D) activations, explicit transposes
around the patch feed-forward, a strided convolution for the patch embedding, exact-erf
``nn.GELU``, LayerNorm with eps 1e-6, autograd for every gradient.  Parameter names equal
minimlp's (the released checkpoint's), so the benchmark loads minimlp's weights into it
and both compute the same function.

This module imports torch; minimlp never imports it unless a PyTorch comparison is asked
for, and then fails with a clear message if torch is missing.
"""

from __future__ import annotations

try:
    import torch
    from torch import nn
except ImportError as exc:  # the package never needs torch; only the comparison does
    raise ImportError("--compare torch needs PyTorch (pip install torch); minimlp itself does not") from exc


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, tokens: int, mlp_ratio: float, patch_hidden: int) -> None:
        super().__init__()
        self.mlp1, self.norm1 = Mlp(dim, int(dim * mlp_ratio)), nn.LayerNorm(dim, eps=1e-6)
        self.mlp2, self.norm2 = Mlp(tokens, patch_hidden), nn.LayerNorm(tokens, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        x = x + self.mlp1(self.norm1(x))
        x = x.transpose(-2, -1)  # (B, D, T): the patch feed-forward mixes tokens
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


class TorchFFViT(nn.Module):
    """FF-ViT in PyTorch eager; built from a minimlp ``FFViTConfig``."""

    def __init__(self, config) -> None:
        super().__init__()
        c = config
        grid = c.img_size // c.patch_size
        tokens = grid * grid + 1
        patch_hidden = c.patch_mlp_dim or int(tokens * c.mlp_ratio)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.pos_encoding = PosEncoding(c.pos_grid or grid, c.embed_dim)
        self.blocks = nn.ModuleList(Block(c.embed_dim, tokens, c.mlp_ratio, patch_hidden) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self.head = nn.Linear(c.embed_dim, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x = self.patch_embed.proj(x)  # (B, D, H/P, W/P)
        pos = self.pos_encoding.pos_embed
        if pos.shape[-2:] != x.shape[-2:]:  # the released model resizes its grid (ff_large: 14x14 to 7x7)
            pos = nn.functional.interpolate(pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, T, D)
        pos = pos.flatten(2).transpose(1, 2)
        x = x + torch.cat([self.pos_encoding.cls_pos_embed, pos], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))  # LayerNorm works per token: the class token alone suffices


def from_minimlp(model, device: str = "cpu") -> TorchFFViT:
    """A PyTorch twin of a minimlp FF-ViT, carrying the same weights."""
    twin = TorchFFViT(model.config)
    state = {k: torch.from_numpy(v.astype("float32")) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin.to(device)
