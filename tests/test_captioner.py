"""Stage 2 on tiny real parts: the captioner's wiring, trainable sets, save/load, learning
to caption and to stop, the `vlv caption` command and the MLflow pyfunc model."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlv import autoencoder, cards, cli, components, vocab, world
from vlv.captioner import Captioner
from vlv.data import to_tensor
from vlv.errors import VLVError

ROOT = Path(__file__).resolve().parents[1]
SCENES = world.sample_scenes(3, 400)
CAPTIONS = [s.caption() for s in SCENES]


def make_captioner(seed: int = 0, num_queries: int = 4) -> Captioner:
    torch.manual_seed(seed)
    clip_tok = vocab.clip_tokenizer(CAPTIONS)
    text_encoder = cards.build("t2i-tiny", "text_encoder", vocab_size=len(clip_tok))
    tok = vocab.qwen2_tokenizer(CAPTIONS)
    llm = cards.build("llm-tiny", "model", vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    encoder = autoencoder.VLVEncoder(components.build_vision("florence2-tiny"), num_queries, int(text_encoder.config.hidden_size))
    encoder.config = {"resolution": 32}
    return Captioner(encoder, text_encoder, clip_tok, llm, tok, max_caption_tokens=32)


def pixels(scenes) -> torch.Tensor:
    return to_tensor(np.stack([s.render() for s in scenes]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model = make_captioner()
    out = tmp_path_factory.mktemp("captioner") / "captioner"
    model.save(out, num_beams=1, max_new_tokens=24, resolution=32)
    return out


def trainable(model: Captioner) -> set[str]:
    names = set()
    for n, p in model.named_parameters():
        if p.requires_grad:
            names.add(n.split(".")[0] if not n.startswith("encoder.") else "encoder")
    return names


def test_trainable_sets_and_the_frozen_clip():
    model = make_captioner()
    counts = {}
    for choice, expect in [("mlp", {"mlp"}), ("mlp+llm", {"mlp", "llm"}), ("mlp+llm+encoder", {"mlp", "llm", "encoder"})]:
        model.set_trainable(choice, ["queries", "projection", "language_model"])
        assert trainable(model) == expect
        counts[choice] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert not any(p.requires_grad for p in model.clip.parameters()), "CLIP stays frozen"
    assert counts["mlp"] < counts["mlp+llm"] < counts["mlp+llm+encoder"]
    # the vision tower was not named: it stays frozen inside the trainable encoder
    assert not any(p.requires_grad for p in model.encoder.florence.model.vision_tower.parameters())
    with pytest.raises(VLVError, match="stage2.trainable='all'"):
        model.set_trainable("all", [])


def test_each_trainable_part_gets_its_own_learning_rate():
    model = make_captioner()
    model.set_trainable("mlp+llm", [])
    model.lr_scale = {"encoder": 5.0, "mlp": 2.0, "llm": 0.5}
    groups = {g["name"]: g for g in model.param_groups(1e-3)}
    assert set(groups) == {"mlp", "llm"}, "a frozen part has no group"
    assert groups["mlp"]["lr"] == pytest.approx(2e-3) and groups["llm"]["lr"] == pytest.approx(5e-4)
    model.set_trainable("mlp+llm+encoder", ["queries", "projection"])
    groups = {g["name"]: g for g in model.param_groups(1e-3)}
    assert groups["encoder"]["lr"] == pytest.approx(5e-3)
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad), "every trainable weight is in one group"


def test_labels_cover_the_caption_and_its_end_but_not_the_prefix_or_padding():
    model = make_captioner()
    ids, mask = model.caption_ids(["a small red circle at the top on a black background", "a"], "cpu")
    eos = model.tokenizer.eos_token_id
    assert ids[0, mask[0].sum() - 1] == eos and ids[1, mask[1].sum() - 1] == eos
    assert mask[1].sum() == 2 and (ids[1, 2:] == model.tokenizer.pad_token_id).all()
    long = " and ".join(["a small red circle at the top"] * 10)
    ids, mask = model.caption_ids([long], "cpu")
    assert ids.shape[1] == 32 and ids[0, -1] == eos, "truncation keeps the end-of-text target"

    # the loss is the LLM's loss on the caption tokens only: changing the prefix's labels is impossible
    batch = {"pixel_values": pixels(SCENES[:2]), "caption": CAPTIONS[:2]}
    model.eval()
    with torch.no_grad():
        loss = model(batch)
        prefix = model.prefix(batch["pixel_values"])
        ids, mask = model.caption_ids(batch["caption"], "cpu")
        logits = model.llm(inputs_embeds=torch.cat([prefix, model.llm.get_input_embeddings()(ids)], 1),
                           attention_mask=torch.cat([torch.ones(2, prefix.shape[1], dtype=torch.long), mask], 1)).logits
        n = prefix.shape[1]
        pred = logits[:, n - 1 : -1]  # the logit before each caption token predicts it
        manual = torch.nn.functional.cross_entropy(pred[mask == 1], ids[mask == 1])
    assert float(loss) == pytest.approx(float(manual), rel=1e-5)


def test_gradients_reach_the_encoder_through_the_frozen_clip():
    model = make_captioner()
    model.set_trainable("mlp+llm+encoder", ["queries", "projection"])
    model.train()
    model({"pixel_values": pixels(SCENES[:2]), "caption": CAPTIONS[:2]}).backward()
    assert model.encoder.queries.grad is not None and model.encoder.queries.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters())


def test_save_load_round_trip_gives_the_same_captions(folder):
    model = Captioner.load(folder)
    again = Captioner.load(folder)
    x = pixels(SCENES[:3])
    assert model.generate(x, 1, 12) == again.generate(x, 1, 12)
    assert model.config["max_new_tokens"] == 24 and model.resolution == 32
    with pytest.raises(VLVError, match="not a captioner folder"):
        Captioner.load(folder.parent)


def test_it_learns_to_stop(tmp_path):
    """Overfit one pair: greedy and beam search must return exactly the caption, which only
    happens if the end-of-text target is learnt (there is no post-hoc cutting). (Telling
    images apart needs an image-specific encoder: from random Florence weights the prefixes
    of different images differ by ~0.5%, which is what stage 1 is for; the pipeline test
    and the no-stage-1 ablation measure that.)"""
    from vlv.config import Optim
    from vlv.train import LoopSpec, train

    scene = SCENES[0]

    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"pixel_values": pixels([scene])[0], "caption": scene.caption()}

    model = make_captioner(seed=1)
    model.set_trainable("mlp+llm", [])
    spec = LoopSpec("overfit", steps=60, global_batch=2, micro_batch=2, optim=Optim(lr=3e-3, warmup_steps=5), checkpoint_every=0)
    train(model, One(), spec, tmp_path / "ckpt", "overfit", progress=False)
    model.eval()
    x = pixels([scene, scene])
    assert model.generate(x, num_beams=1, max_new_tokens=40) == [scene.caption()] * 2
    assert model.generate(x, num_beams=3, max_new_tokens=40) == [scene.caption()] * 2


def test_vlv_caption_writes_json_and_lists_unreadable_files(folder, tmp_path):
    images = tmp_path / "mine"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(SCENES[0].render()).save(images / "a.png")
    Image.fromarray(world.scene_at(1, 1, 80).render()).convert("L").resize((80, 50)).save(images / "sub" / "b.jpg")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "captions.json"
    r = subprocess.run([sys.executable, "-m", "vlv.cli", "caption", str(images), "--model", str(folder), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert "Loading weights" not in r.stderr and "caption: 100%" in r.stderr  # transformers' bars off, ours on
    captions = json.loads(out.read_text())
    assert sorted(captions) == ["a.png", "sub/b.jpg"] and all(isinstance(c, str) for c in captions.values())


@pytest.fixture
def shots(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c.jpg"]):
        Image.fromarray(SCENES[i].render()).save(tmp_path / name)
    return tmp_path


def test_vlv_caption_takes_a_single_file(folder, shots, capsys):
    cli.main(["caption", str(shots / "b.png"), "--model", str(folder)])
    assert list(json.loads(capsys.readouterr().out)) == ["b.png"]


def test_vlv_caption_takes_a_glob_and_reads_a_file_named_twice_once(folder, shots, capsys):
    cli.main(["caption", str(shots / "*.png"), str(shots / "a.png"), "--model", str(folder)])  # quoted: vlv expands it
    captions = json.loads(capsys.readouterr().out)
    assert list(captions) == ["a.png", "b.png"] and all(isinstance(c, str) for c in captions.values())


def test_missing_model_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vlv.cli", "caption", str(tmp_path), "--model", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a captioner folder" in r.stderr


@pytest.fixture(scope="module")
def registered(folder, tmp_path_factory):
    """The captioner logged as a pyfunc model and registered as test-captioner, in a fresh store."""
    import mlflow

    from vlv.serving import log_captioner

    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=str(store / "artifacts"))
    with mlflow.start_run(experiment_id=exp):
        log_captioner(folder, "test-captioner", ROOT / "src" / "vlv")
    mlflow.set_tracking_uri(None)
    return uri


def test_pyfunc_model_logs_registers_loads_and_predicts(folder, registered, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered)
    mlflow.set_tracking_uri(registered)
    png = tmp_path / "a.png"
    Image.fromarray(SCENES[0].render()).save(png)
    b64 = base64.b64encode(png.read_bytes()).decode()
    # a model config's image_root lets requests name files inside that folder (here, tmp_path)
    model = mlflow.pyfunc.load_model("models:/test-captioner/latest", model_config={"image_root": str(tmp_path)})
    out = model.predict(pd.DataFrame({"image": [b64, str(png), "not an image"]}))
    direct = Captioner.load(folder).generate(pixels(SCENES[:1] * 2), 1, 24)[0]  # same batch as the two readable rows
    assert list(out["caption"][:2]) == [direct, direct]
    assert out["caption"][2] is None
    assert "row 2" in out["error"][2] and out["error"][0] is None
    plain = mlflow.pyfunc.load_model("models:/test-captioner/latest").predict(pd.DataFrame({"image": [str(png)]}))
    assert plain["caption"][0] is None and "not base64 image bytes" in plain["error"][0]  # by default: no server path
    mlflow.set_tracking_uri(None)


def served(folder: Path, image_root: Path | None = None):
    """The pyfunc model as `mlflow models serve` loads it, without MLflow's loader or a server."""
    from mlflow.pyfunc import PythonModelContext

    from vlv.serving import CaptionerModel

    model = CaptionerModel()
    model.load_context(PythonModelContext({"captioner": str(folder)}, {"image_root": str(image_root)} if image_root else {}))
    return model


def answers(model, entries: list) -> list[dict]:
    """predict's rows as the server's JSON answer carries them (a bare NaN fails the parse)."""
    import io

    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = model.predict(None, pd.DataFrame({"image": entries}))
    buf = io.StringIO()
    predictions_to_json(out, buf)

    def bare(constant):
        raise AssertionError(f"the JSON answer holds a bare {constant}")

    return json.loads(buf.getvalue(), parse_constant=bare)["predictions"]


def test_served_model_reads_base64_only_and_answers_null_not_nan(folder, tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(SCENES[0].render()).save(png)
    b64 = base64.b64encode(png.read_bytes()).decode()
    rows = answers(served(folder), [b64, str(png), str(tmp_path / "missing.png"), "/etc/passwd", "not an image"])
    assert isinstance(rows[0]["caption"], str) and rows[0]["error"] is None
    assert all(r["caption"] is None for r in rows[1:])
    said = {r["error"].split(": ", 1)[1] for r in rows[1:]}  # after "row i: "
    assert said == {"not base64 image bytes; send the image's bytes base64-encoded"}, said  # an existing file reads as a missing one
    assert answers(served(folder), [str(png)]) == [{"caption": None, "error": "row 0: " + said.pop()}]  # all rows failed: still null


def test_served_model_with_an_image_root_reads_only_inside_it(folder, tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "secret.png"
    (allowed / "sub").mkdir(parents=True)
    Image.fromarray(SCENES[0].render()).save(allowed / "sub" / "a.png")
    Image.fromarray(SCENES[1].render()).save(outside)
    (allowed / "link.png").symlink_to(outside)  # a link inside that leads out
    model = served(folder, allowed)
    inside = ["sub/a.png", str(allowed / "sub" / "a.png"), base64.b64encode((allowed / "sub" / "a.png").read_bytes()).decode()]
    refused = ["../secret.png", str(outside), "link.png", "../missing.png", str(tmp_path / "missing.png"), "sub/missing.png",
               "sub", "/etc/passwd", "sub/a.png\0"]
    rows = answers(model, inside + refused)
    assert len({r["caption"] for r in rows[:3]}) == 1 and all(r["error"] is None and r["caption"] for r in rows[:3])
    said = {r["error"].split(": ", 1)[1] for r in rows[3:]}
    assert said == {"neither base64 image bytes nor a readable file inside the model's image folder"}, said
    assert all(r["caption"] is None for r in rows[3:])
    with pytest.raises(VLVError, match="model config image_root: .* is not a folder"):
        served(folder, tmp_path / "no-such-folder")


@pytest.mark.slow  # ~20 s: a server process that imports mlflow, torch and the model
def test_mlflow_models_serve_answers_over_http(folder, registered, tmp_path):
    """`mlflow models serve` (docs/OPERATIONS.md's command) on the registered model, asked over HTTP."""
    import os
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)  # the server execs `uvicorn` from PATH: the venv's, as when it is activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered, "PYTHONPATH": str(ROOT / "src"),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/test-captioner/latest", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"mlflow models serve exited {server.returncode}: {server.stderr.read()[-2000:]}")
                if time.time() > deadline:
                    pytest.fail("mlflow models serve did not answer /ping within 120 s")
                time.sleep(0.5)
        png = tmp_path / "a.png"
        Image.fromarray(SCENES[0].render()).save(png)
        body = json.dumps({"dataframe_records": [{"image": base64.b64encode(png.read_bytes()).decode()},
                                                 {"image": "not an image"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            rows = json.loads(r.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    direct = Captioner.load(folder).generate(pixels(SCENES[:1]), 1, 24)[0]
    assert rows[0]["caption"] == direct and pd.isna(rows[0]["error"])
    assert pd.isna(rows[1]["caption"]) and "row 1" in rows[1]["error"]
