"""One rank of tests/unit/test_grad_compression.py, started by horovodrun or torchrun (2 processes):
``python compression_rank.py <engine> <compression> <out.json>``.

Each rank builds the same small model, takes its own batch, runs one backward pass through the engine's wrapped
model and optimizer, and writes the gradients the optimizer would step with beside both ranks' local gradients
(every rank computes both, from the seeds) as JSON. The test compares them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))


def local_gradient(model, rank: int):
    import torch

    inputs = torch.randn(8, 16, generator=torch.Generator().manual_seed(100 + rank))
    model.zero_grad()
    (model(inputs) ** 2).mean().backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


def main() -> int:
    import torch

    from classeg.training.collectives import for_engine

    engine, compression, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    coll = for_engine(engine)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.7)
    local = [local_gradient(model, rank).tolist() for rank in range(coll.size)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_model, optimizer = coll.wrap(model, optimizer, accum_steps=1, device=torch.device("cpu"),
                                       compression=compression)
    inputs = torch.randn(8, 16, generator=torch.Generator().manual_seed(100 + coll.rank))
    optimizer.zero_grad()
    (train_model(inputs) ** 2).mean().backward()
    if engine == "horovod":
        optimizer.synchronize()  # the averaged gradients, as the step would use them
    averaged = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    if coll.rank == 0:
        Path(out).write_text(json.dumps({"size": coll.size, "local": local, "averaged": averaged.tolist()}))
    coll.barrier()
    coll.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
