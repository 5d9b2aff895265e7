"""An independent PyTorch twin of the feed-forward-only ViT, for parity tests only.

Written the way the paper's released code is: (B, T, D) activations, explicit transposes
around the patch feed-forward, a convolution for the patch embedding, a learned position
grid resized with ``F.interpolate(mode="bilinear", align_corners=False)`` whenever its size
differs from the patch grid's, autograd for every gradient.  Parameter names equal the
released checkpoint's, so minimlp's state dict loads into it by name.  PyTorch is an
optional test dependency; the package never imports it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from minimlp.gradcheck import rel_error
from minimlp.loss import cross_entropy_backward, cross_entropy_forward


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
    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        embed_dim=192,
        depth=12,
        patch_mlp_dim=None,
        pos_grid=None,
    ) -> None:
        super().__init__()
        grid = img_size // patch_size
        tokens = grid * grid + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_encoding = PosEncoding(pos_grid or grid, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, tokens, patch_mlp_dim or 4 * tokens) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        B = x.shape[0]
        x = self.patch_embed.proj(x)  # (B, D, H/P, W/P)
        pos = self.pos_encoding.pos_embed
        if pos.shape[-2:] != x.shape[-2:]:
            pos = torch.nn.functional.interpolate(pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        pos = pos.flatten(2).transpose(1, 2)
        x = x + torch.cat([self.pos_encoding.cls_pos_embed, pos], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def assert_float64_parity(model, twin, x: np.ndarray, y: np.ndarray) -> None:
    """minimlp's model and its float64 twin agree to 1e-9: logits, smoothed loss, input gradient,
    every parameter gradient, under the same names in the same order.

    Some gradients are exactly zero by construction (the FF model's last patch-FF output bias,
    every attention's key bias, the Mixer's last token-MLP output bias), so each tensor is
    measured against at least 1e-3 of the largest gradient, as gradcheck does.
    """
    logits, cache = model.forward(x)
    loss, lcache = cross_entropy_forward(logits, y, smoothing=0.1)
    model.zero_grad()
    dx = model.backward(cross_entropy_backward(lcache), cache)

    xt = torch.from_numpy(x).requires_grad_(True)
    logits_t = twin(xt)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(y), label_smoothing=0.1)
    loss_t.backward()

    assert rel_error(logits, logits_t.detach().numpy()) < 1e-9
    assert abs(float(loss) - loss_t.item()) / loss_t.item() < 1e-9
    assert rel_error(dx, xt.grad.numpy()) < 1e-9
    twin_params = dict(twin.named_parameters())
    assert list(twin_params) == list(model.grads)
    floor = 1e-3 * max(float(np.abs(g).max()) for g in model.grads.values())
    for key, g in model.grads.items():
        assert rel_error(g, twin_params[key].grad.numpy(), floor=floor) < 1e-9, key
