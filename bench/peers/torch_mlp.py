#!/usr/bin/python3
"""torch_mlp.py: the PyTorch peer of build/train for the throughput comparison.

Trains the same MLP (Linear+ReLU, widths from --model) on Fashion-MNIST with
plain SGD (no momentum, no weight decay, constant rate), batch 128 and
cross-entropy, on one thread, and prints lines in build/train's style:

    loss L (mean of the last K steps)
    test accuracy X% after N steps; S samples/s; G GFLOP/s

samples/s counts training samples over the wall time of the N timed steps
alone (batch gather, forward, loss, backward, zero-grad, SGD update), as
build/train does: start-up, data loading, warm-up and evaluation are not in
it. The untimed warm-up steps train the model and then its starting weights
are put back, so the timed run is exactly N steps from the initialisation,
like ours. The initialisation is torch's default for nn.Linear, U(+-1/sqrt(in))
for weights and biases, the same distribution as tm_mlp_init.

Needs Debian's python3-torch: run it with /usr/bin/python3.
"""
import os

# One thread everywhere, fixed before torch (and its OpenMP / OpenBLAS) loads:
# the comparison is one core against one core.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import gzip
import struct
import sys
import time

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)
torch.set_num_interop_threads(1)


def read_idx(path, ndim):
    """An unsigned-byte IDX array (gzip-compressed) as a numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != 0x800 + ndim:
        sys.exit(f"torch_mlp.py: {path}: bad IDX magic {magic:#x}")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        sys.exit(f"torch_mlp.py: {path}: {data.size} data bytes, header says {dims}")
    return data.reshape(dims)


def load(data_dir, split):
    """Images as (n, 784) float32 in [0, 1] and labels as int64 tensors.

    The tensors share numpy's buffers, which numpy (by default, on Linux)
    advises the kernel to back with transparent huge pages; that is what a
    plain PyTorch user gets, so it is left as it is."""
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"), 3)
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"), 1)
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def build(widths):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="784,256,128,10", help="layer widths, inputs first")
    p.add_argument("--steps", type=int, default=400, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before (weights reset)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loss-window", type=int, default=20,
                   help="the reported loss is the mean over this many last steps")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    try:
        widths = [int(w) for w in a.model.split(",")]
    except ValueError:
        sys.exit(f"torch_mlp.py: --model wants comma-separated integers, not {a.model!r}")
    if len(widths) < 2 or min(widths) < 1 or a.steps < 1 or a.warmup < 0 or a.batch < 1:
        sys.exit("torch_mlp.py: --model needs two or more positive widths; --steps, "
                 "--batch positive; --warmup not negative")

    x_train, y_train = load(a.data_dir, "train")
    x_test, y_test = load(a.data_dir, "t10k")
    if widths[0] != x_train.shape[1]:
        sys.exit(f"torch_mlp.py: --model starts with {widths[0]} inputs, "
                 f"the data has {x_train.shape[1]}")
    classes = int(y_train.max()) + 1
    if widths[-1] != classes:
        sys.exit(f"torch_mlp.py: --model ends with {widths[-1]} outputs, "
                 f"the data has {classes} classes")

    torch.manual_seed(a.seed)
    model = build(widths)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0, weight_decay=0)
    loss_fn = nn.CrossEntropyLoss()
    per_epoch = len(x_train) // a.batch  # the tail batch is dropped, as ours does
    gen = torch.Generator().manual_seed(a.seed)

    def batches():
        """Batch indices forever, a fresh shuffle every epoch."""
        while True:
            perm = torch.randperm(len(x_train), generator=gen)
            for s in range(per_epoch):
                yield perm[s * a.batch:(s + 1) * a.batch]

    def step(idx):
        # Gathering the rows is the host-to-device copy ours does per step.
        xb, yb = x_train[idx], y_train[idx]
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    warm = batches()
    for _ in range(a.warmup):
        step(next(warm))
    model.load_state_dict(start)

    losses = []
    it = batches()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        losses.append(step(next(it)))
    dt = time.perf_counter() - t0

    with torch.no_grad():
        correct = (model(x_test).argmax(1) == y_test).sum().item()
    k = min(a.loss_window, len(losses))
    loss = torch.stack(losses[-k:]).mean().item()
    samples = a.steps * a.batch
    flops = 6.0 * sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1)) * samples
    print(f"pytorch {torch.__version__}, {torch.get_num_threads()} thread(s), model {a.model}, "
          f"batch {a.batch}, sgd lr {a.lr}, {a.warmup} warm-up steps untimed")
    print(f"loss {loss:.4f} (mean of the last {k} steps)")
    print(f"test accuracy {100.0 * correct / len(y_test):.2f}% after {a.steps} steps; "
          f"{samples / dt:.0f} samples/s; {flops / dt * 1e-9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
