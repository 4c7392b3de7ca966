#!/usr/bin/python3
"""torch_gpt.py: the PyTorch peer of build/train's GPT (nanoGPT's model.py,
bias=True, dropout 0, GELU with the tanh approximation, LM head tied to the
token embedding, 256 byte values), with tinymesh's data, recipe and
checkpoint format, on one thread.

Subcommands:
  init   write nanoGPT-initialised weights as a safetensors checkpoint (no
         tinymesh metadata: build/train loads it as weights, step 0)
  compare  the per-step losses (build/train's --metrics against train's
         --losses) and every tensor of two checkpoints, max|a - b| / max|b|,
         and each against a float64 run's (--ref); exits 1 past --tol,
         except for a tensor where the float64 run shows that PyTorch's
         float32 run is the one that strayed (listed as such)
  train  train from such a checkpoint (or from its own initialisation) on the
         same windows as build/train, print one line per step, and write the
         per-step losses (--losses, JSON), the final weights (--save) and the
         validation loss; its last line reads like build/train's:
           val loss L nats/byte (B bits/byte) after N steps; S tokens/s; G GFLOP/s

The data is build/train's: the corpus (the regular, non-.dat files of
/usr/share/games/fortunes sorted by name, or --text files) split at
floor((1 - val_fraction) n); windows of T + 1 bytes at stride T; with
--no-shuffle step s takes windows [s B, (s + 1) B), otherwise a Fisher-Yates
shuffle per epoch from tinymesh's PCG32 stream 1000 + epoch (the same
order). The learning rate is tm_lr_at: linear warm-up lr (s + 1) / W, cosine
from lr to min_lr at --lr-decay-steps, min_lr after. AdamW (weight decay on
the 2-D tensors only), clip_grad_norm_ to --clip-grad. tokens/s counts the
training tokens over the wall time of the training steps only.

Needs Debian's python3-torch: run it with /usr/bin/python3. One thread:
OPENBLAS_NUM_THREADS etc. are set to 1 before torch loads (Debian's torch
calls OpenBLAS, which torch.set_num_threads does not bind).
"""
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import json
import math
import struct
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

CORPUS_DIR = "/usr/share/games/fortunes"


def die(msg):
    sys.exit(f"torch_gpt.py: {msg}")


# ---- safetensors, the few lines of it we need -----------------------------

def st_write(path, tensors, meta=None):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        a = t.detach().contiguous().to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(a)]}
        blobs.append(a)
        off += len(a)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, d in header.items():
        if d["dtype"] != "F32":
            die(f"{path}: {name} is {d['dtype']}, not F32")
        b, e = d["data_offsets"]
        a = np.frombuffer(raw[base + b:base + e], dtype=np.float32).reshape(d["shape"])
        out[name] = torch.from_numpy(a.copy()).to(torch.get_default_dtype())
    return out, meta


# ---- the model --------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(C, 3 * C)
        self.attn.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(C, 4 * C)
        self.mlp.c_proj = nn.Linear(4 * C, C)

    def attention(self, x):
        B, T, C = x.size()
        q, k, v = self.attn.c_attn(x).split(C, dim=2)
        hs = C // self.H
        q = q.view(B, T, self.H, hs).transpose(1, 2)
        k = k.view(B, T, self.H, hs).transpose(1, 2)
        v = v.view(B, T, self.H, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.attn.c_proj(y)

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        x = x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, L, H, C, T, V=256):
        super().__init__()
        self.T = T
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(V, C)
        self.transformer.wpe = nn.Embedding(T, C)
        self.transformer.h = nn.ModuleList([Block(C, H) for _ in range(L)])
        self.transformer.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        # nanoGPT's initialisation.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * L))
            elif name.endswith(".bias") and "ln_" not in name:
                torch.nn.init.zeros_(p)
            elif "ln_" in name:
                torch.nn.init.ones_(p) if name.endswith("weight") else torch.nn.init.zeros_(p)
            else:
                torch.nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        pos = torch.arange(T, dtype=torch.long)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def tensors(self):
        """The state_dict as tinymesh stores it: the tied lm_head once."""
        return {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}


# ---- data and recipe -------------------------------------------------------

def load_corpus(text):
    if text:
        paths = text.split(",")
    else:
        names = sorted(os.listdir(CORPUS_DIR), key=lambda s: s.encode())
        paths = []
        for n in names:
            p = os.path.join(CORPUS_DIR, n)
            if n.startswith(".") or n.endswith(".dat") or os.path.islink(p) or not os.path.isfile(p):
                continue
            paths.append(p)
    data = b"".join(open(p, "rb").read() for p in paths)
    if not data:
        die("the corpus is empty")
    return np.frombuffer(data, dtype=np.uint8)


class Pcg32:
    """tinymesh's strategies/rng.h, for the same data order."""
    M = 6364136223846793005
    MASK = (1 << 64) - 1

    def __init__(self, seed, stream):
        self.state, self.inc = 0, ((stream << 1) | 1) & self.MASK
        self.u32()
        self.state = (self.state + seed) & self.MASK
        self.u32()

    def u32(self):
        old = self.state
        self.state = (old * self.M + self.inc) & self.MASK
        x = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
        rot = old >> 59
        return ((x >> rot) | (x << ((-rot) & 31))) & 0xFFFFFFFF

    def below(self, n):
        m = self.u32() * n
        low = m & 0xFFFFFFFF
        if low < n:
            t = ((1 << 32) - n) % n
            while low < t:
                m = self.u32() * n
                low = m & 0xFFFFFFFF
        return m >> 32


def epoch_order(n, seed, epoch, shuffle):
    order = list(range(n))
    if not shuffle:
        return order
    r = Pcg32(seed, 1000 + epoch)
    for i in range(n - 1, 0, -1):
        j = r.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def lr_at(a, s, total):
    if a.lr_schedule == "constant":
        return a.lr
    if s < a.warmup_steps:
        return a.lr * (s + 1) / a.warmup_steps
    end = a.lr_decay_steps if a.lr_decay_steps > 0 else total
    span = end - a.warmup_steps
    if span <= 0:
        return a.lr if s < end else a.min_lr
    p = min((s - a.warmup_steps) / span, 1.0)
    return a.min_lr + (a.lr - a.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def windows(buf, T, idx):
    """Inputs and targets of the windows idx of a split."""
    x = np.stack([buf[i * T:i * T + T] for i in idx]).astype(np.int64)
    y = np.stack([buf[i * T + 1:i * T + T + 1] for i in idx]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def evaluate(model, val, T, batch, n):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, n, batch):
        idx = range(i, min(n, i + batch))
        x, y = windows(val, T, idx)
        _, loss = model(x, y)
        total += loss.item() * x.numel()
        count += x.numel()
    model.train()
    return total / count


def cmd_init(a):
    torch.manual_seed(a.seed)
    model = GPT(a.layers, a.heads, a.d_model, a.context)
    st_write(a.out, model.tensors())
    print(f"wrote {a.out}: {sum(p.numel() for p in model.parameters())} parameters")


def cmd_train(a):
    if a.double:
        torch.set_default_dtype(torch.float64)
    torch.manual_seed(a.seed)
    model = GPT(a.layers, a.heads, a.d_model, a.context)
    if a.load:
        tensors, _ = st_read(a.load)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [m for m in missing if m != "lm_head.weight"]
        if missing or unexpected:
            die(f"{a.load}: missing {missing}, unexpected {unexpected}")
    T, B = a.context, a.batch
    corpus = load_corpus(a.text)
    n_train = int(math.floor((1.0 - a.val_fraction) * len(corpus)))
    train, val = corpus[:n_train], corpus[n_train:]
    n_windows, n_val = (len(train) - 1) // T, (len(val) - 1) // T
    if a.eval_sequences:
        n_val = min(n_val, a.eval_sequences)
    per_epoch = n_windows // B
    total = per_epoch * (a.epochs if a.epochs else max(1, -(-a.steps // per_epoch)))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(a.beta1, a.beta2), eps=1e-8)
    losses, seconds, step, epoch = [], 0.0, 0, 0
    flops = 0
    while step < a.steps:
        order = epoch_order(n_windows, a.seed, epoch, not a.no_shuffle)
        for s in range(per_epoch):
            if step >= a.steps:
                break
            t0 = time.perf_counter()
            x, y = windows(train, T, order[s * B:(s + 1) * B])
            lr = lr_at(a, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if a.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip_grad)
            opt.step()
            value = loss.item()
            seconds += time.perf_counter() - t0
            losses.append(value)
            step += 1
            if step % a.log_every == 0 or step == a.steps:
                print(f"step {step} loss {value:.6f} lr {lr:.6g}", flush=True)
        epoch += 1
    L, C, H = a.layers, a.d_model, a.heads
    flops_per_token = 6 * (12 * L * C * C + 256 * C) + 12 * L * T * C
    tokens = step * B * T
    val_loss = evaluate(model, val, T, B, n_val) if n_val > 0 else float("nan")
    if a.losses:
        with open(a.losses, "w") as f:
            json.dump(losses, f)
    if a.save:
        st_write(a.save, model.tensors())
    tps = tokens / seconds if seconds > 0 else 0.0
    print(f"val loss {val_loss:.4f} nats/byte ({val_loss / math.log(2):.4f} bits/byte) after "
          f"{step} steps; {tps:.0f} tokens/s; {tps * flops_per_token * 1e-9:.1f} GFLOP/s")


def cmd_compare(a):
    ours_losses = []
    with open(a.ours_metrics) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") == "step":
                ours_losses.append(r["loss"])
    with open(a.torch_losses) as f:
        torch_losses = json.load(f)
    bad = 0
    if len(ours_losses) != len(torch_losses):
        print(f"steps: ours {len(ours_losses)}, torch {len(torch_losses)}")
        bad += 1
    print(f"{'step':>4} {'ours':>12} {'torch':>12} {'rel diff':>10}")
    for i, (o, t) in enumerate(zip(ours_losses, torch_losses)):
        d = abs(o - t) / abs(t)
        bad += d > a.tol
        print(f"{i + 1:4d} {o:12.7f} {t:12.7f} {d:10.2e}{'  FAIL' if d > a.tol else ''}")
    ours = {k: v for k, v in st_read(a.ours)[0].items() if not k.startswith("optimizer.")}
    theirs, _ = st_read(a.torch)
    ref = st_read(a.ref)[0] if a.ref else None
    if set(ours) != set(theirs):
        print(f"tensors differ: only ours {sorted(set(ours) - set(theirs))}, "
              f"only torch {sorted(set(theirs) - set(ours))}")
        bad += 1
    head = f"{'tensor':<36} {'ours vs torch':>14}"
    if ref is not None:
        head += f" {'ours vs f64':>12} {'torch vs f64':>13}"
    print(head)
    worst = 0.0

    def dist(x, y):
        return (x.double() - y.double()).abs().max().item() / max(y.double().abs().max().item(), 1e-30)

    arbitrated = 0
    for name in sorted(set(ours) & set(theirs)):
        d = dist(ours[name], theirs[name])
        worst = max(worst, d)
        line, mark = f"{name:<36} {d:14.2e}", ""
        if ref is not None:
            o64, t64 = dist(ours[name], ref[name]), dist(theirs[name], ref[name])
            line += f" {o64:12.2e} {t64:13.2e}"
            # Two float32 runs that disagree past the limit: the float64 run
            # says which of them strayed.
            if d > a.tol and o64 < t64:
                mark, arbitrated = "  torch strays (ours is nearer float64)", arbitrated + 1
        if d > a.tol and not mark:
            mark, bad = "  FAIL", bad + 1
        print(line + mark)
    print(f"worst tensor {worst:.2e}; limit {a.tol:g} on every step's loss and every tensor"
          f"{f', {arbitrated} past it where PyTorch is the one off float64' if arbitrated else ''}"
          f": {'ok' if bad == 0 else f'{bad} FAILED'}")
    sys.exit(1 if bad else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("compare")
    q.add_argument("--ours-metrics", required=True)
    q.add_argument("--torch-losses", required=True)
    q.add_argument("--ours", required=True)
    q.add_argument("--torch", required=True)
    q.add_argument("--ref", help="a float64 run's checkpoint")
    q.add_argument("--tol", type=float, default=1e-4)
    for name in ("init", "train"):
        q = sub.add_parser(name)
        q.add_argument("--layers", type=int, default=4)
        q.add_argument("--heads", type=int, default=4)
        q.add_argument("--d-model", type=int, default=128)
        q.add_argument("--context", type=int, default=128)
        q.add_argument("--seed", type=int, default=1)
    q = sub.choices["init"]
    q.add_argument("--out", required=True)
    q = sub.choices["train"]
    q.add_argument("--load", help="start from these weights")
    q.add_argument("--text", help="comma-separated files (default: the fortunes corpus)")
    q.add_argument("--val-fraction", type=float, default=0.1)
    q.add_argument("--eval-sequences", type=int, default=0)
    q.add_argument("--steps", type=int, required=True)
    q.add_argument("--epochs", type=int, default=0,
                   help="the schedule's length in epochs (default: as many as --steps needs)")
    q.add_argument("--batch", type=int, default=32)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--min-lr", type=float, default=None)
    q.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    q.add_argument("--warmup-steps", type=int, default=100)
    q.add_argument("--lr-decay-steps", type=int, default=0)
    q.add_argument("--beta1", type=float, default=0.9)
    q.add_argument("--beta2", type=float, default=0.99)
    q.add_argument("--weight-decay", type=float, default=0.1)
    q.add_argument("--clip-grad", type=float, default=1.0)
    q.add_argument("--no-shuffle", action="store_true")
    q.add_argument("--losses", help="write the per-step losses here (JSON)")
    q.add_argument("--save", help="write the final weights here (safetensors)")
    q.add_argument("--log-every", type=int, default=100)
    q.add_argument("--double", action="store_true",
                   help="compute in float64 (a reference for both float32 runs)")
    a = p.parse_args()
    if a.cmd == "compare":
        return cmd_compare(a)
    if a.d_model % a.heads:
        die("--d-model must be a multiple of --heads")
    if a.cmd == "train" and a.min_lr is None:
        a.min_lr = a.lr / 10
    cmd_init(a) if a.cmd == "init" else cmd_train(a)


if __name__ == "__main__":
    main()
