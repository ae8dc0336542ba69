"""The small model and data of the example jobs (and of the DDP/FSDP tests).

A 2-layer causal transformer (d_model 32) learning arithmetic sequences: token
t+1 = token t + stride (mod vocab).  Each rank draws its own batches from
(seed, step, rank), so gradients differ per rank and the all-reduce matters.
"""
import hashlib

import torch
import torch.nn as nn


class TinyTransformer(nn.Module):
    def __init__(self, vocab=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq, d_model) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens):
        n = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:n]
        for layer in self.layers:
            x = layer(x, src_mask=self.mask[:n, :n], is_causal=True)
        return self.head(self.norm(x))


def batch(step, rank, seed=0, batch_size=8, seq=16, vocab=64, device="cpu"):
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    start = torch.randint(0, vocab, (batch_size, 1), generator=g)
    stride = torch.randint(1, 4, (batch_size, 1), generator=g)
    seqs = (start + stride * torch.arange(seq + 1)) % vocab
    return seqs[:, :-1].to(device), seqs[:, 1:].to(device)


def build_model(seed=0, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    return TinyTransformer().to(device=device, dtype=dtype)


def train(model, steps, rank, seed=0, lr=3e-3, device="cpu", on_step=None):
    """Plain training loop (Adam); returns the losses.  `on_step(step, loss)` after each step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        x, y = batch(step, rank, seed, device=device)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def param_digest(module):
    """sha256 (16 hex digits) of every parameter's and buffer's bytes, in state_dict order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.full_tensor() if hasattr(t, "full_tensor") else t
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
