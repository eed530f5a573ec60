"""The `vlv` command (pipelines/ scripts run under ``vlv.entry.stage``).

User-facing failures (bad params, a missing folder, ...) raise ``VLVError`` and are
printed as one line on stderr with exit status 2; anything else unexpected is one line naming
a log file with the traceback, exit 1 (vlv.entry.crash); a reader that closes the pipe early
(``vlv params --show | head``) is one line, exit 1. Never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from . import __version__, config, tracking
from .entry import crash, fail
from .errors import VLVError


# ----------------------------------------------------------------------------- commands
def cmd_params(args: argparse.Namespace) -> None:
    params, note = config.load_with_note(args.params)
    config.check_sweep(params, args.params)
    if note:
        print(note, file=sys.stderr)
    if args.show:
        for key, value in config.flatten(config.dump(params)).items():
            print(f"{key}: {value}")
    else:
        print(f"{args.params}: ok (profile {params.profile}, source {params.prepare.source})")


def cmd_sweep(args: argparse.Namespace) -> None:
    from . import sweep

    params = config.load(args.params)
    config.check_sweep(params, args.params)
    config.check_paths(params, args.params)
    sweep.run_sweep(params, args.study, args.n_trials, args.storage, args.objective)


def cmd_ui(args: argparse.Namespace) -> None:
    from . import tracking

    cmd = tracking.ui_command(port=args.port)
    print(" ".join(cmd), file=sys.stderr)
    os.execvp(cmd[0], cmd)


def cmd_world(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image

    from . import world

    scenes = world.sample_scenes(args.seed, args.n, args.size)
    cols = min(args.n, 8)
    rows = -(-args.n // cols)
    sheet = np.zeros((rows * args.size, cols * args.size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        r, c = divmod(i, cols)
        sheet[r * args.size : (r + 1) * args.size, c * args.size : (c + 1) * args.size] = scene.render()
        print(f"{i}\t{scene.caption()}")
    scale = max(1, 256 // args.size)
    Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.Resampling.NEAREST).save(args.out)
    print(f"wrote {args.out}", file=sys.stderr)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from .autoencoder import load_autoencoder
    from .data import find_images, load_images
    from .plots import to_uint8

    found = find_images(args.images)  # a path that matches nothing stops here, before the model loads
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VLVError(f"--out {args.out}: cannot make this folder ({err.strerror}); name a folder in a writable place") from None
    model = load_autoencoder(args.model, args.t2i)  # a broken stage-1 folder: one line
    size = int(model.encoder.config.get("resolution", model.encoder.image_size))
    images = load_images(found, size)
    for i in tqdm(range(0, len(images), args.batch_size), desc="reconstruct", unit="batch"):
        chunk = images[i : i + args.batch_size]
        x = torch.stack([t for _, t in chunk])
        recon = model.reconstruct(x, args.guidance_scale, args.steps, seed=args.seed)
        for (name, _), a, b in zip(chunk, to_uint8(x), to_uint8(recon)):
            pair = np.concatenate([a, b], axis=1)
            target = args.out / (Path(name).with_suffix("").as_posix().replace("/", "__") + "_recon.png")
            Image.fromarray(pair).save(target)
    print(f"wrote {len(images)} side-by-side reconstructions (input | reconstruction) to {args.out}", file=sys.stderr)


def cmd_caption(args: argparse.Namespace) -> None:
    import json

    import torch

    from .captioner import Captioner, caption_batches
    from .data import find_images, load_images

    found = find_images(args.images)  # a path that matches nothing stops here, before the model loads
    if args.out:
        check_writable(args.out)  # before the model loads and every caption is computed
    model = Captioner.load(args.model)  # a broken captioner folder: one line
    images = load_images(found, model.resolution)  # unreadable files: listed on stderr, skipped
    beams = args.num_beams or model.config.get("num_beams", 1)
    max_new = args.max_new_tokens or model.config.get("max_new_tokens", 32)
    captions = caption_batches(model, torch.stack([t for _, t in images]), beams, max_new, args.batch_size)
    result = json.dumps({name: c for (name, _), c in zip(images, captions)}, indent=2, ensure_ascii=False)
    if args.out:
        write_or_keep(args.out, result + "\n", f"{len(captions)} captions")
        print(f"wrote {len(captions)} captions to {args.out}", file=sys.stderr)
    else:
        print(result)


def check_writable(path: Path) -> None:
    """One line unless ``path`` is a file that can be written in an existing folder (none is made)."""
    if path.is_dir():
        raise VLVError(f"--out {path} is a folder; name a file to write, e.g. {path / 'captions.json'}")
    if not path.parent.is_dir():
        raise VLVError(f"--out {path}: {path.parent} is not an existing folder; create it first or name a file in one")
    try:
        if path.exists():
            open(path, "a").close()  # opened for writing, not truncated
        else:
            tempfile.TemporaryFile(dir=path.parent).close()  # a file made and gone
    except OSError as err:
        raise VLVError(f"--out {path} cannot be written ({err.strerror}); name a file in a writable folder") from None


def write_or_keep(path: Path, text: str, what: str) -> None:
    """Write ``text`` to ``path``; if that fails, keep it in a file in the system temp dir and say
    where in one line (or, if that fails too, print it on stdout)."""
    try:
        path.write_text(text, encoding="utf-8")
        return
    except OSError as err:
        why = err.strerror or type(err).__name__
    try:
        fd, kept = tempfile.mkstemp(prefix="vlv-captions-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError:
        print(text, end="")
        raise VLVError(f"--out {path} could not be written ({why}), nor a file in {tempfile.gettempdir()}; "
                       f"the {what} are on stdout above") from None
    raise VLVError(f"--out {path} could not be written ({why}); the {what} are kept in {kept}; move that file "
                   f"where you want it")


def cmd_bench_arch(args: argparse.Namespace) -> None:
    from . import throughput

    ms = throughput.run(card=args.card, device=args.device, precision=args.precision, compile=args.compile,
                        warmup=args.warmup, steps=args.steps, stages=tuple(args.stages),
                        records=None if args.no_record else args.records, details=None if args.no_record else args.details,
                        batch_scale=args.batch_scale)
    for stage, r in sorted(throughput.ratios(ms).items()):
        print(f"{stage}: ours / official = {r:.2f}x samples/s")
    if args.device == "cuda" and not args.no_record:
        print(f"appended {len(ms)} records to {args.records} and the details to {args.details}", file=sys.stderr)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number; give 1 or more")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``error: vlv caption: argument --batch-size: ...``), exit 2."""

    def error(self, message: str):
        fail(f"{self.prog}: {message}; see {self.prog} --help")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, unless there is none to show (None, a flag's
    False) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="vlv",
        description="Vision-Language-Vision auto-encoder. Stages run through DVC (`dvc repro`); these are the tools around them.",
        epilog="`vlv COMMAND --help` describes a command and its options.",
    )
    ap.add_argument("--version", action="version", version=f"vlv {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, formatter_class=_HelpFormatter)

    images_help = ("image files, folders (every image under them) or glob patterns (quoted ones are expanded too; "
                   "** reaches into sub-folders); a file named twice is read once")

    p = command("params", "validate a params file (and --show every resolved value)",
                "Validate a params file: its profile overlay, every value and the component folders it names. "
                "A problem is one line on stderr, exit 2.")
    p.add_argument("--params", default="params.yaml", help="the params file")
    p.add_argument("--show", action="store_true", help="print every resolved param as a dotted key")
    p.set_defaults(fn=cmd_params)

    p = command("sweep", "Optuna sweep over sweep.space: each trial runs stage 1 + stage 2 on sweep.budget",
                "Run Optuna trials over the params' sweep.space: each trial trains stage 1 + stage 2 on sweep.budget "
                "(an MLflow child run); the study's outputs go to reports/sweep/STUDY/. Workers on the same --storage "
                "and --study share the study (docs/OPERATIONS.md, Sweeps).")
    p.add_argument("--study", required=True, help="study name; workers on the same storage and name share it")
    p.add_argument("--n-trials", type=int, required=True, help="trials this worker runs (0: only write the study's outputs)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sweep.storage, else sqlite:///mlruns/optuna.db)")
    p.add_argument("--objective", choices=["accuracy", "stage1_loss"], default=None, help="what trials are ranked by (default: sweep.objective)")
    p.add_argument("--params", default="params.yaml", help="the params file")
    p.set_defaults(fn=cmd_sweep)

    p = command("ui", "open the MLflow UI on this project's store, bound to 127.0.0.1",
                "Start the MLflow UI on this project's store (mlruns/), bound to 127.0.0.1: one run per stage, "
                "grouped by the tag vlv.pipeline_id.")
    p.add_argument("--port", type=int, default=5000, help="the port to listen on")
    p.set_defaults(fn=cmd_ui)

    p = command("world", "render shapes-world scenes (spec v1) to a PNG sheet and print their captions",
                "Render shapes-world scenes (spec v1, docs/SHAPES_WORLD.md) to one PNG sheet, up to 8 a row, "
                "and print each scene's true caption.")
    p.add_argument("--n", type=int, default=16, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="scene sampling seed")
    p.add_argument("--size", type=int, default=32, help="scene side in pixels")
    p.add_argument("--out", type=Path, default=Path("world.png"), help="the PNG sheet to write")
    p.set_defaults(fn=cmd_world)

    p = command("reconstruct", "images back from their VLV embeddings (input | reconstruction PNGs)",
                "Paint images back from their stage-1 embeddings: one input | reconstruction PNG per image in --out. "
                "Images of any size or mode, scaled and centre-cropped as in prepare; unreadable files are listed "
                "on stderr, not fatal.")
    p.add_argument("images", nargs="+", metavar="IMAGES", help=images_help)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("--model", type=Path, default=Path("models/stage1"), help="the stage-1 encoder folder")
    p.add_argument("--t2i", type=Path, default=None, help="T2I folder (default: the one the encoder was trained with)")
    p.add_argument("--guidance-scale", type=float, default=2.0, help="classifier-free guidance scale (against the empty caption)")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch")
    p.add_argument("--seed", type=int, default=0, help="the diffusion noise seed")
    p.set_defaults(fn=cmd_reconstruct)

    p = command("caption", "caption images (files, folders, globs) -> one JSON {file name: caption}",
                "Caption images of any size or mode with the trained captioner (scaled and centre-cropped as in "
                "prepare) and print one JSON object {name: caption}. Names are paths relative to the deepest folder "
                "holding every input (a single folder's images: their names inside it). Unreadable files are "
                "listed on stderr, not fatal.")
    p.add_argument("images", nargs="+", metavar="IMAGES", help=images_help)
    p.add_argument("--model", type=Path, default=Path("models/captioner"), help="a captioner folder (stage2's output)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    p.add_argument("--num-beams", type=positive_int, default=None, help="beam width (default: the model's setting)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="caption length limit (default: the model's setting)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch")
    p.set_defaults(fn=cmd_caption)

    p = command("bench-arch", "time stage-1/2 training steps of a card set's architecture (random weights): "
                              "the official recipe's setting vs ours; samples/s, memory, MFU",
                "Time stage-1 and stage-2 training steps of a card set's architecture with random weights, in the "
                "official recipe's setting and in ours: samples/s, peak memory, FLOPs and MFU. On CUDA the results are "
                "appended to the throughput records the cost projection reads (benchmarks/README.md).")
    p.add_argument("--card", default="paper", choices=["paper", "embedded"],
                   help="paper: SD-2.1-base + Florence-2-large + Qwen2.5-3B; embedded: the shapes-world parts")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu", "meta"],
                   help="cpu: embedded card only; meta: count FLOPs, no timing")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="our setting's precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and the UNet / LLM in our setting")
    p.add_argument("--stages", nargs="+", default=["stage1", "stage2"], choices=["stage1", "stage2"],
                   help="stages to time (default: both)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=5, help="timed steps per stage and setting (the median is kept)")
    p.add_argument("--batch-scale", type=float, default=1.0, help="scale the per-device batches (e.g. 0.5 if memory runs out)")
    p.add_argument("--records", default="benchmarks/throughput.csv", help="throughput records for the cost projection")
    p.add_argument("--details", default="benchmarks/bench_arch.jsonl", help="every number of the run, one JSON line")
    p.add_argument("--no-record", action="store_true", help="print only")
    p.set_defaults(fn=cmd_bench_arch)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:  # bare `vlv`: the help, as a usage error (argparse's exit status 2)
        ap.print_help(sys.stderr)
        raise SystemExit(2)
    try:
        args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except VLVError as err:
        fail(str(err))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        print(f"error: vlv {args.command}: the reader of its output closed the pipe early; output cut short "
              f"(write it to a file to keep all of it)", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as err:
        crash(f"vlv {args.command}", err)


if __name__ == "__main__":
    main()
