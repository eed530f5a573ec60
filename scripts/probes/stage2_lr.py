"""Probe (issue 4): stage 2 from the committed stage-1 encoder for STEPS steps at learning
rate LR, then attribute accuracy of the captions of the first 200 *training* pairs (is it
under- or over-fitting?). From the repo root, after `dvc repro stage1`:
    .venv/bin/python scripts/probes/stage2_lr.py 3e-4 400
"""
import sys, dataclasses, shutil; sys.path.insert(0,'src'); sys.path.insert(0,'pipelines')
import torch
from vlv import config, data, world
from vlv.captioner import caption_batches
from vlv.train import spec_from, train
import stage2 as S
p = config.load('params.yaml')
lr, steps = float(sys.argv[1]), int(sys.argv[2])
m = S.build(p)
spec = spec_from(p.stage2, 'stage2', 0)
spec = dataclasses.replace(spec, steps=steps, optim=p.stage2.optim.model_copy(update={'lr': lr}), checkpoint_every=0)
ds = S.pairs(p)
shutil.rmtree('/tmp/smoke/ck_s2', ignore_errors=True)
r = train(m, ds, spec, '/tmp/smoke/ck_s2', 'x', progress=False)
print('loss', r.losses[0], r.losses[len(r.losses)//2], r.losses[-1])
sub = data.ShardDataset('data/prepared', 'pairs', captions=True, limit=200)
x = torch.stack([sub[i]['pixel_values'] for i in range(len(sub))])
print('lr', lr, 'train acc', world.score(caption_batches(m, x, 1, 32), sub.rows['caption'].tolist()))
