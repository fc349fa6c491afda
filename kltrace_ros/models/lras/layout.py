"""The LRAS two-frame sequence layout: pointer tokens, position ids ``offset + 5p + j``, 2x2 code
patches, the hidden-patch pointer block (see ``../shared/reference/lras-format.md`` section 4)."""
from __future__ import annotations

import torch


class Layout:
    """The published two-frame RGB layout (7B RGB predictor), from the model's ``cfg``.

    Frame-f patch p (raster over a ``grid`` x ``grid`` patch grid) is five tokens
    ``[pointer_f + p, c0, c1, c2, c3]`` (codes of the 2x2 code block, row-major) with
    position ids ``pos_f + 5p + j``. Pointers of frame 0 start at the code vocabulary size,
    frame 1 pointers right after; positions of frame 1 start at ``5 * n_patches``.
    """

    def __init__(self, n_codes: int = 65536, grid: int = 32, patch: int = 2):
        self.n_codes, self.grid, self.patch = n_codes, grid, patch
        self.n_patches = grid * grid
        self.tokens_per_patch = 1 + patch * patch
        self.pointer = (n_codes, n_codes + self.n_patches)
        self.position = (0, self.tokens_per_patch * self.n_patches)

    @property
    def vocab_needed(self) -> int:
        return self.n_codes + 2 * self.n_patches

    def patchify(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, grid*patch, grid*patch) codes -> (B, n_patches, patch*patch), row-major inside a patch."""
        b, h, w = codes.shape
        p, g = self.patch, self.grid
        if h != g * p or w != g * p:
            raise ValueError(f"code grid {h}x{w} does not match the layout ({g * p}x{g * p})")
        return codes.view(b, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(b, g * g, p * p)

    def frame_tokens(self, patches: torch.Tensor, order: torch.Tensor, frame: int):
        """Tokens (B, 5L) and positions (5L,) of the patches ``order`` (L,) of one frame."""
        b = patches.shape[0]
        order = order.to(patches.device)
        ptr = (self.pointer[frame] + order).view(1, -1, 1).expand(b, -1, 1)
        tok = torch.cat([ptr, patches[:, order]], -1).reshape(b, -1)
        j = torch.arange(self.tokens_per_patch, device=patches.device)
        pos = (self.position[frame] + self.tokens_per_patch * order.view(-1, 1) + j).reshape(-1)
        return tok, pos

    def pointer_block(self, hidden: torch.Tensor, frame: int = 1):
        """Pointer tokens and positions (M,) for the hidden patches ``hidden`` (M,), predicting their first code."""
        return self.pointer[frame] + hidden, self.position[frame] + self.tokens_per_patch * hidden

    def two_frame_sequence(self, src_patches: torch.Tensor, tgt_patches: torch.Tensor, src_order: torch.Tensor,
                           revealed: torch.Tensor, hidden: torch.Tensor):
        """Frame 0 (patches ``src_order`` of ``src_patches`` (B, n, 4), see ``patchify``), the ``revealed`` frame-1
        patches of ``tgt_patches`` (B or 1, n, 4), then the pointer block of ``hidden``: tokens (B, T), positions
        (T,) and the slice of the pointer block."""
        t0, p0 = self.frame_tokens(src_patches, src_order, 0)
        t1, p1 = self.frame_tokens(tgt_patches.expand(t0.shape[0], -1, -1), revealed, 1)
        tp, pp = self.pointer_block(hidden.to(t0.device))
        tok = torch.cat([t0, t1, tp.view(1, -1).expand(t0.shape[0], -1)], 1)
        pos = torch.cat([p0, p1, pp])
        return tok, pos, slice(tok.shape[1] - len(hidden), tok.shape[1])

    def to_raster(self, values: torch.Tensor, hidden: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Scatter per-hidden-patch rows (B, M, ...) back to raster order (B, n_patches, ...)."""
        out = values.new_full((values.shape[0], self.n_patches) + values.shape[2:], fill)
        out[:, hidden.to(values.device)] = values
        return out


def split_mask(mask: torch.Tensor, generator: torch.Generator | None = None):
    """(revealed, hidden) patch indices of a (g, g) reveal mask, each in a random order."""
    flat = mask.flatten()
    perm = torch.randperm(flat.numel(), generator=generator)
    return perm[flat[perm]], perm[~flat[perm]]
