"""DVC stage `verify` (right after `components`, before `prepare`): the paper profile's first minute.

`pretrain.mode: verify` (paper profile): loads the component folders through the stages' own
builders and runs one tiny built-in batch (vlv.verify.builtin_batch: two pictures drawn in
code, no prepared data) through every part, so a broken or mismatched folder fails with one
line before `prepare` reads a single shard. It reads no data, so DVC runs it before `prepare`
and re-runs it only when the folders' fingerprints, its params or its code change.
`pretrain.mode: train` (embedded profile): the parts are `pretrain`'s outs, not there yet;
nothing to check here (pretrain checks what it trains), and the record says so.
"""

import json
from pathlib import Path

from vlv import config, verify
from vlv.entry import stage

METRICS = Path("metrics/verify.json")


@stage("verify", main_only=True)
def main(params: config.Params) -> None:
    """Run one built-in batch through every component folder (paper profile)."""
    if params.pretrain.mode == "verify":
        record = {"verified": 1, **verify.verify_folders(params, verify.builtin_batch(params.prepare.image_size))}
        shown = (f"the three folders ran one built-in batch in {record['verify_seconds']:.1f} s (losses "
                 + ", ".join(f"{k} {v:.3f}" for k, v in record["verify_losses"].items()) + ")")
    else:
        record = {"verified": 0, "skipped": "pretrain.mode train: the parts are pretrain's outs; pretrain checks them"}
        shown = record["skipped"]
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"verify: {shown} -> {METRICS}")


if __name__ == "__main__":
    main()
