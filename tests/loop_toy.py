"""A small real model for exercising vlv.train: run as a script (optionally under
`accelerate launch`) or import. Writes the final weights and losses to OUT (argv[1])."""

import json
import os
import signal
import sys

import torch

from vlv.config import Optim
from vlv.train import LoopSpec, per_sample_randn, sample_generators, train


class Points(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Regressor(torch.nn.Module):
    def __init__(self, nan_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))
        self.calls, self.nan_at = 0, nan_at

    def forward(self, batch):
        self.calls += 1
        noise = per_sample_randn((1,), sample_generators(batch["sample_id"], seed=0)) * 0.01
        loss = ((self.net(batch["x"]) - batch["y"] - noise) ** 2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return loss


def spec(**kw):
    base = dict(name="toy", steps=20, global_batch=8, micro_batch=4, optim=Optim(lr=1e-2, warmup_steps=2),
                seed=0, checkpoint_every=5, log_every=1)
    base.update(kw)
    return LoopSpec(**base)


def run(out, ckpt, kill_at=None, **kw):
    model = Regressor()

    def log(step, metrics):
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    res = train(model, Points(), spec(**kw), ckpt, fingerprint="toy-v1", log=log, progress=False)
    from vlv.train import accelerator

    if accelerator().is_main_process:
        weights = {k: v.tolist() for k, v in model.state_dict().items()}
        with open(out, "w") as fh:
            json.dump({"losses": res.losses, "weights": weights, "resumed_from": res.resumed_from}, fh)


if __name__ == "__main__":
    out, ckpt = sys.argv[1], sys.argv[2]
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
    micro = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    run(out, ckpt, kill_at=kill_at, micro_batch=micro)
