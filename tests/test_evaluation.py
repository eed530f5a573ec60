"""Evaluation: caption metrics, per-image attribute hits, the attribute classifier's label
layout and the Fréchet distance."""

import shutil

import numpy as np
import pytest

from vlv import classifier, evaluation, world

REFS = [s.caption() for s in world.sample_scenes(7, 40)]
JAVA = shutil.which("java")


@pytest.fixture(autouse=True)
def no_java(monkeypatch, request):
    """The Java scorers (PTB tokenizer, METEOR) start a JVM per call (~10 s for METEOR's
    paraphrase table): only the test that is about them uses them."""
    if "java" not in request.node.name:
        monkeypatch.setattr(evaluation.shutil, "which", lambda name: None)


def test_caption_scores_rank_perfect_above_perturbed_above_wrong():
    perfect = evaluation.caption_scores(REFS, REFS)
    assert perfect["bleu_4"] == pytest.approx(1.0, abs=1e-6) and perfect["rouge_l"] == pytest.approx(1.0)
    perturbed = evaluation.caption_scores([r.replace("red", "blue") for r in REFS], REFS)
    wrong = evaluation.caption_scores(["a dog on a sofa"] * len(REFS), REFS)
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert perfect[key] > perturbed[key] > wrong[key], key


def test_empty_predictions_score_zero_rather_than_crash():
    out = evaluation.caption_scores([""] * 3, REFS[:3])
    assert out["bleu_1"] < 1e-6 and out["cider"] == 0.0


def test_without_jvm_meteor_is_skipped_with_a_reason():
    out = evaluation.caption_scores(REFS, REFS)
    assert out["meteor"] is None and "java" in out["meteor_skipped"] and out["tokenizer"].startswith("simple")
    assert out["bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_meteor_can_be_switched_off_with_a_reason():
    out = evaluation.caption_scores(REFS, REFS, meteor=False)
    assert out["meteor"] is None and out["meteor_skipped"] == "evaluate.meteor is false"


@pytest.mark.slow  # ~17 s of JVM start-up; the pipeline test runs the Java scorers through `evaluate` anyway
@pytest.mark.skipif(JAVA is None, reason="METEOR needs Java")
def test_with_java_meteor_is_reported():
    out = evaluation.caption_scores(REFS[:5], REFS[:5])
    assert out["tokenizer"] == "ptb" and 0.9 < out["meteor"] <= 1.0


def test_hits_of_one_caption():
    ref = "a small red circle at the top left and a large blue square at the center on a black background"
    assert world.hits(ref, ref)["exact"] == 1.0 and world.hits(ref, ref)["mean"] == 1.0
    h = world.hits("a small red circle at the top left and a large green square at the center on a black background", ref)
    assert h["colour"] == 0.5 and h["shape"] == 1.0 and h["exact"] == 0.0 and h["count"] == 1.0
    one = world.hits("a small red circle at the top left on a white background", ref)
    assert one["count"] == 0.0 and one["colour"] == 0.5 and one["background"] == 0.0
    assert world.hits("gibberish", ref) == {**dict.fromkeys(world.FIELDS, 0.0), "exact": 0.0, "parsed": 0.0, "mean": 0.0}
    # the aggregate is the per-image hits weighted by objects
    preds = [REFS[1], *REFS[1:]]
    agg = world.score(preds, REFS)
    assert agg["background"] == pytest.approx(np.mean([world.hits(p, r)["background"] for p, r in zip(preds, REFS)]))


def test_classifier_targets_decode_back_to_the_caption():
    for scene in world.sample_scenes(11, 500):
        t = classifier.targets(scene.attributes)
        assert len(t) == len(classifier.GROUPS) and all(0 <= c < k for c, k in zip(t, classifier.GROUPS))
        assert classifier.describe(classifier.decode(t)) == scene.caption()


def test_classifier_reads_attributes_from_its_logits():
    import torch

    model = classifier.AttributeClassifier.from_card()
    x = torch.zeros(2, 3, 32, 32)
    assert model.logits(x).shape == (2, classifier.NUM_LOGITS)
    assert model.features(x).shape == (2, int(model.backbone.config.hidden_sizes[-1]))
    assert len(model.predict(x)) == 2


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    assert classifier.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2, 0, 0, 0, 0])
    assert classifier.frechet_distance(a, a + shift) == pytest.approx(5.0, abs=1e-6)  # same covariance: |d|^2
    b = rng.normal(size=(300, 6)) * 2
    from scipy import linalg

    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert classifier.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A FID Inception weights file as the usual .pth converts: torchvision names, plus heads."""
    import torch
    from safetensors.torch import save_file

    from vlv import inception

    torch.manual_seed(0)
    net = inception.FIDInception()
    for m in net.modules():  # He init keeps the signal alive through 94 layers (torch's default fades it to ~0)
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # ignored: not a feature
    path = tmp_path_factory.mktemp("inception") / "fid_inception.safetensors"
    save_file(state, str(path))
    return path


def test_fid_inception_has_inception_v3s_size_and_loads_safetensors_by_torchvision_names(inception_file):
    from vlv import inception

    net = inception.load(inception_file)
    assert sum(p.numel() for p in net.parameters()) == 21_785_568  # torchvision's inception_v3 less its two heads
    images = np.stack([s.render() for s in world.sample_scenes(0, 2)])
    feats = net.features(images)
    assert feats.shape == (2, inception.FEATURES) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])


def test_fid_of_regenerations_is_zero_for_the_originals_and_grows_with_a_change(inception_file):
    from vlv import inception

    net = inception.load(inception_file)
    originals = np.stack([s.render() for s in world.sample_scenes(1, 3)])
    scores = evaluation.inception_scores(net, originals, {"same": originals, "inverted": 255 - originals})
    assert abs(scores["same_fid"]) < 1e-3  # round-off of 2048-d square roots from 3 images
    assert scores["inverted_fid"] > 10 and scores["feature_dim"] == 2048


def test_bad_inception_files_are_one_line(tmp_path, inception_file):
    import torch
    from safetensors.torch import load_file, save_file

    from vlv import inception
    from vlv.errors import VLVError

    pickled = tmp_path / "pt_inception.pth"
    torch.save({"a": torch.zeros(1)}, pickled)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in load_file(str(inception_file)).items() if not k.startswith("Mixed_7c")}, str(partial))
    for path, words in [(tmp_path / "none.safetensors", "is not a file"), (pickled, "not a safetensors file"),
                        (partial, "missing")]:
        with pytest.raises(VLVError) as info:
            inception.load(path)
        assert "\n" not in str(info.value) and words in str(info.value) and str(info.value).startswith("evaluate.inception:")
