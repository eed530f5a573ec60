"""DVC stage `pretrain`: the parts the paper downloads, trained on the shapes world.

`pretrain.mode: train` (embedded profile): trains the T2I decoder (VAE, CLIP text encoder +
tokenizer, UNet), the caption LM, the attribute classifier (all on the `web` split) and the
Florence-2 vision encoder (as a captioner, on web captions until issue 20 item 2), saves them
as standard HF folders under models/pretrained/, and checks them (colour check through
StableDiffusionPipeline, LM continuations, Florence-2's own val captions).
`pretrain.mode: verify` (paper profile): the `verify` stage has already run a built-in batch
through the component folders before `prepare`; here the same check (vlv.verify) runs on the
first prepared pairs, the user's own images and captions at prepare.image_size, and the frozen
T2I paints those captions (plots/pretrain/teacher_samples.png).
"""

import json
from pathlib import Path

from vlv import config, pretrain, tracking, verify
from vlv.cli import stage
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
            metrics = {"verified": 1, **verify.verify_folders(params, verify.prepared_batch(DATA), OUT, PLOTS)}
        else:
            metrics = pretrain.train_parts(params, DATA, OUT, CKPT, PLOTS, LATENTS)
        if not tracking.is_main():  # accelerate launch: the main process saved the parts; it checks and logs
            return
        tracking.record("pretrain", metrics, METRICS, sorted(PLOTS.glob("*")))
        clear_checkpoints(CKPT)
        print(f"pretrain: {json.dumps({k: v for k, v in metrics.items() if k not in ('lm_samples', 'vision_samples', 'reads')}, default=str)}")


if __name__ == "__main__":
    main()
