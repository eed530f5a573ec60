"""Convert the usual FID Inception weights (a PyTorch .pth state dict with torchvision's
Inception3 names, e.g. pt_inception-2015-12-05-6726825d.pth) to the safetensors file that
`evaluate.inception` names. Run once, offline, on a file you already have:

    python scripts/convert_inception.py pt_inception-2015-12-05-6726825d.pth models/fid_inception.safetensors

The .pth is read with torch.load(weights_only=True) (tensors only, no code); the output is
checked by loading it the way evaluate does (vlv.inception.load).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from vlv import inception  # noqa: E402
from vlv.errors import VLVError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pth", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    try:
        state = torch.load(a.pth, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable input is one line
        print(f"convert_inception: cannot read {a.pth} as a tensors-only state dict ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(a.out))
    try:
        inception.load(a.out, param=str(a.out))
    except VLVError as err:
        a.out.unlink()
        print(f"convert_inception: {err}", file=sys.stderr)
        return 2
    print(f"convert_inception: wrote {a.out} ({len(tensors)} tensors); set evaluate.inception: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
