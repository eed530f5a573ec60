"""DVC stage `pretrain`: the parts the paper downloads, loaded and checked (or trained).

`pretrain.mode: verify` (the default, and the paper profile): the component folders are loaded
as they are, as the paper loads SD-2.1, Florence-2 and Qwen2.5: the `verify` stage has run a
built-in batch through them before `prepare`; here the same check (vlv.verify) runs on the first
prepared pairs, and in the shapes world the teacher paints world captions that the analytic
reader and the attribute classifier read back (pretrain.check_parts: teacher_* per field in
metrics/pretrain.json, plots/pretrain/teacher_samples.png). The record of the shipped parts
(pretrained/shapes-world/RECORD.json) goes into the metrics as `shipped`.
`pretrain.mode: train` (profiles/pretrain.yaml): trains the parts whose component folder is
models/pretrained/<part> (pretrain.train_parts), then checks them the same way.
"""

import json
from pathlib import Path

from vlv import config, pretrain, tracking, verify
from vlv.entry import stage
from vlv.train import clear_checkpoints

DATA = Path("data/prepared")
OUT = Path("models/pretrained")
CKPT = Path("checkpoints/pretrain")
LATENTS = Path("cache/latents")  # the VAE's latents of the web split (the teacher's corpus)
METRICS = Path("metrics/pretrain.json")
PLOTS = Path("plots/pretrain")


@stage("pretrain")
def main(params: config.Params) -> None:
    """Train (embedded) or verify (paper) the pretrained parts."""
    verifying = params.pretrain.mode == "verify"
    if verifying and not tracking.is_main():
        return
    PLOTS.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run("pretrain", params):
        if verifying:
            metrics = {"verified": 1, **verify.verify_folders(params, verify.prepared_batch(DATA), OUT, PLOTS),
                       **pretrain.check_parts(params, DATA, PLOTS)}
        else:
            metrics = pretrain.train_parts(params, DATA, OUT, CKPT, PLOTS, LATENTS)
        if not tracking.is_main():  # accelerate launch: the main process saved the parts; it checks and logs
            return
        if records := pretrain.shipped(params):
            metrics["shipped"] = records
        tracking.record("pretrain", metrics, METRICS, sorted(PLOTS.glob("*")))
        clear_checkpoints(CKPT)
        print(f"pretrain: {json.dumps({k: v for k, v in metrics.items() if not k.endswith('samples') and k not in ('reads', 'shipped')}, default=str)}")


if __name__ == "__main__":
    main()
