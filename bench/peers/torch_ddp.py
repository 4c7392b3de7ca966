#!/usr/bin/python3
"""torch_ddp.py: the PyTorch DistributedDataParallel peer of build/train --dp.

Trains the same MLP (Linear+ReLU, widths from --model) on Fashion-MNIST with
plain SGD (no momentum, no weight decay, constant rate) and cross-entropy, as
--procs processes (2) of one thread each, joined by the gloo backend over the
loopback interface, under DistributedDataParallel with its default buckets.
Each process takes --batch samples (128) of every global batch of procs x
batch, so it computes what build/train --dp 2 --batch 256 does, and prints
lines in build/train's style:

    loss L (mean of the last K steps, over the global batch)
    test accuracy X% after N steps; S samples/s; G GFLOP/s

Every rank draws the same seeded permutation of the training set and takes
its slice of each global batch. samples/s counts global samples over the
wall time of the N timed steps (batch gather, forward, loss, backward with
DDP's all-reduce, zero-grad, SGD update), the slowest rank's, after a
barrier: process start-up, data loading, warm-up and evaluation are not in
it. The untimed warm-up steps train the model and then its starting weights
are put back on every rank, so the timed run is exactly N steps from the
initialisation. The data loading and the model come from torch_mlp.py.

Needs Debian's python3-torch: run it with /usr/bin/python3.
"""
import os

# One thread per process, fixed before torch (and its OpenMP / OpenBLAS)
# loads: two processes on two cores, as ours runs two devices on two threads.
# Spawned children re-import this module, so they get the same settings.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
# Gloo binds its pairs to this interface: loopback only.
os.environ["GLOO_SOCKET_IFNAME"] = "lo"

import argparse
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_mlp import build, load  # noqa: E402  (after the thread settings)

# torch_mlp.py has set both already on import; torch refuses a second
# set_num_interop_threads, so it is only called if that ever changes.
torch.set_num_threads(1)
if torch.get_num_interop_threads() != 1:
    torch.set_num_interop_threads(1)


def worker(rank, a, widths, store_path):
    """One DDP rank; rank 0 prints the results."""
    # A file store needs no port, so concurrent runs cannot collide on one.
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=a.procs)
    x_train, y_train = load(a.data_dir, "train")
    torch.manual_seed(a.seed)
    model = DistributedDataParallel(build(widths))
    start = {k: v.clone() for k, v in model.module.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0, weight_decay=0)
    loss_fn = nn.CrossEntropyLoss()
    global_batch = a.batch * a.procs
    per_epoch = len(x_train) // global_batch  # the tail batch is dropped, as ours does
    gen = torch.Generator().manual_seed(a.seed)

    def batches():
        """This rank's slice of every global batch, a fresh shuffle every epoch."""
        while True:
            perm = torch.randperm(len(x_train), generator=gen)
            for s in range(per_epoch):
                lo = s * global_batch + rank * a.batch
                yield perm[lo:lo + a.batch]

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
    model.module.load_state_dict(start)

    losses = []
    it = batches()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        losses.append(step(next(it)))
    dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(dt, op=dist.ReduceOp.MAX)
    dt = dt.item()

    # Each rank's loss is its slice's mean; the global batch's is their mean.
    k = min(a.loss_window, len(losses))
    tail = torch.stack(losses[-k:])
    dist.all_reduce(tail)
    loss = (tail / a.procs).mean().item()
    if rank == 0:
        x_test, y_test = load(a.data_dir, "t10k")
        with torch.no_grad():
            correct = (model.module(x_test).argmax(1) == y_test).sum().item()
        samples = a.steps * global_batch
        flops = 6.0 * sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1)) * samples
        print(f"pytorch {torch.__version__} DistributedDataParallel, gloo on loopback, "
              f"{a.procs} process(es) x {torch.get_num_threads()} thread(s), model {a.model}, "
              f"batch {a.batch} per process ({global_batch} global), sgd lr {a.lr}, "
              f"{a.warmup} warm-up steps untimed")
        print(f"loss {loss:.4f} (mean of the last {k} steps)")
        print(f"test accuracy {100.0 * correct / len(y_test):.2f}% after {a.steps} steps; "
              f"{samples / dt:.0f} samples/s; {flops / dt * 1e-9:.1f} GFLOP/s")
    # Torch 1.13 can deadlock tearing DDP down: the reducer's destructor
    # joins gloo's worker thread while holding the GIL, which that thread
    # needs to free a tensor. So, once every rank is past its last
    # collective, each one leaves without any teardown.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="784,256,128,10", help="layer widths, inputs first")
    p.add_argument("--steps", type=int, default=400, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before (weights reset)")
    p.add_argument("--procs", type=int, default=2, help="DDP processes, one thread each")
    p.add_argument("--batch", type=int, default=128, help="samples per process per step")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loss-window", type=int, default=20,
                   help="the reported loss is the mean over this many last steps")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    try:
        widths = [int(w) for w in a.model.split(",")]
    except ValueError:
        sys.exit(f"torch_ddp.py: --model wants comma-separated integers, not {a.model!r}")
    if (len(widths) < 2 or min(widths) < 1 or a.steps < 1 or a.warmup < 0 or a.batch < 1
            or a.procs < 1):
        sys.exit("torch_ddp.py: --model needs two or more positive widths; --steps, "
                 "--batch, --procs positive; --warmup not negative")
    if not dist.is_available() or not dist.is_gloo_available():
        sys.exit("torch_ddp.py: this torch has no gloo backend for torch.distributed")

    # The shapes are checked here, once, so that a mistake is one message
    # rather than one traceback per rank.
    try:
        x_train, y_train = load(a.data_dir, "train")
    except OSError as e:
        sys.exit(f"torch_ddp.py: cannot read the training set: {e}")
    if widths[0] != x_train.shape[1]:
        sys.exit(f"torch_ddp.py: --model starts with {widths[0]} inputs, "
                 f"the data has {x_train.shape[1]}")
    classes = int(y_train.max()) + 1
    if widths[-1] != classes:
        sys.exit(f"torch_ddp.py: --model ends with {widths[-1]} outputs, "
                 f"the data has {classes} classes")
    if a.batch * a.procs > len(x_train):
        sys.exit(f"torch_ddp.py: a global batch of {a.batch * a.procs} is more than the "
                 f"{len(x_train)} training samples")
    del x_train, y_train

    with tempfile.TemporaryDirectory(prefix="torch_ddp.") as tmp:
        try:
            mp.spawn(worker, args=(a, widths, os.path.join(tmp, "store")), nprocs=a.procs,
                     join=True)
        except mp.ProcessRaisedException as e:
            sys.exit(f"torch_ddp.py: a rank failed:\n{e}")
        except mp.ProcessExitedException as e:
            sys.exit(f"torch_ddp.py: a rank exited: {e}")


if __name__ == "__main__":
    main()
