"""Paper-size architecture cards: they build the real classes, at the published sizes.

Every model is built under ``torch.device("meta")``, so no paper-size weights are ever
allocated; only shapes exist, which is all a parameter count needs.
"""

import pytest
import torch

from vlv import cards
from vlv.errors import VLVError

# Parameter counts the cards must reproduce, with the published figure each one matches.
# The exact numbers were measured from the cards (meta device) and agree with the sizes
# the model authors publish; the tolerance is there so that a harmless library change
# (an extra bias, a buffer turned parameter) does not break the test, while a wrong
# layer count or width does.
PUBLISHED = {
    # SD-2.1-base UNet: 865.91M (diffusers UNet2DConditionModel, use_linear_projection).
    ("sd-2.1-base", "unet"): 865_910_724,
    # SD-2.x KL-f8 VAE: 83.65M.
    ("sd-2.1-base", "vae"): 83_653_863,
    # OpenCLIP ViT-H/14 text tower as SD-2 uses it (penultimate layer: 23 of 24 layers): ~340M.
    ("sd-2.1-base", "text_encoder"): 340_387_840,
    # Florence-2-large: 0.77B (DaViT 360.6M + projector 2.2M + BART-large-style 407.4M, lm_head tied).
    ("florence2-large", "model"): 770_213_888,
    # Qwen2.5-3B: 3.09B with tied input/output embeddings.
    ("qwen2.5-3b", "model"): 3_085_938_688,
}
TOLERANCE = 0.02


def _count(card: str, part: str) -> tuple[int, torch.nn.Module]:
    with torch.device("meta"):
        model = cards.build(card, part)
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params), f"{card}/{part} allocated real weights"
    return sum(p.numel() for p in params), model


@pytest.mark.parametrize(("card", "part"), sorted(PUBLISHED))
def test_paper_size_parts_match_published_parameter_counts(card, part):
    n, _ = _count(card, part)
    expected = PUBLISHED[(card, part)]
    assert abs(n - expected) <= TOLERANCE * expected, f"{card}/{part}: {n:,} parameters, published ~{expected:,}"


def test_the_cards_carry_the_architecture_facts_the_method_relies_on():
    _, clip = _count("sd-2.1-base", "text_encoder")
    assert clip.config.num_hidden_layers == 23 and clip.config.hidden_size == 1024
    assert clip.config.max_position_embeddings == 77
    _, unet = _count("sd-2.1-base", "unet")
    assert unet.config.cross_attention_dim == 1024 and unet.config.in_channels == 4

    _, florence = _count("florence2-large", "model")
    assert florence.config.text_config.d_model == 1024
    assert florence.config.vision_config.projection_dim == 1024
    # the <image> placeholder must be a row of the embedding table
    assert florence.config.image_token_id < florence.config.text_config.vocab_size

    _, qwen = _count("qwen2.5-3b", "model")
    assert qwen.config.hidden_size == 2048
    assert qwen.lm_head.weight is qwen.model.embed_tokens.weight  # tied embeddings
    assert qwen.config.rope_parameters["rope_theta"] == 1_000_000.0

    card = cards.load_card("florence2-large")
    assert card["kind"] == "vision" and card["image_size"] == 768
    assert cards.load_card("sd-2.1-base")["resolution"] == 512
    for name in ("sd-2.1-base", "florence2-large", "qwen2.5-3b"):
        assert name in cards.available()
        assert cards.load_card(name)["source"]


def test_scheduler_part_builds_the_sd_training_noise_schedule():
    sched = cards.build("sd-2.1-base", "scheduler")
    assert type(sched).__name__ == "DDPMScheduler"
    assert sched.config.num_train_timesteps == 1000
    assert sched.config.beta_schedule == "scaled_linear"
    assert sched.config.prediction_type == "epsilon"
    assert sched.betas[0].item() == pytest.approx(0.00085)
    assert sched.betas[-1].item() == pytest.approx(0.012)


@pytest.mark.parametrize(
    ("card", "part", "words"),
    [("no-such-card", "x", "not found"), ("sd-2.1-base", "no-such-part", "no part")],
)
def test_unknown_card_or_part_is_a_one_line_vlv_error(card, part, words):
    with pytest.raises(VLVError) as err:
        cards.build(card, part)
    msg = str(err.value)
    assert words in msg and "\n" not in msg


def test_a_card_init_redraws_only_the_parameters_it_names():
    torch.manual_seed(0)
    florence = cards.build("florence2-tiny", "model")
    named = {k: v.detach() for k, v in florence.named_parameters()}
    # named by the card's init: redrawn at the card's std
    assert 0.2 < float(named["model.multi_modal_projector.image_position_embed.row_embeddings.weight"].std()) < 0.4
    assert 0.8 < float(named["model.language_model.encoder.embed_positions.weight"].std()) < 1.2
    # everything else keeps the library's init, at the card's init_std (0.1)
    assert 0.08 < float(named["model.language_model.decoder.embed_positions.weight"].std()) < 0.12
    assert 0.08 < float(named["model.language_model.decoder.layers.0.encoder_attn.q_proj.weight"].std()) < 0.12


def test_an_init_pattern_that_matches_nothing_is_a_one_line_vlv_error():
    card = cards.load_card("florence2-tiny")
    card["parts"]["model"]["init"] = {"model.no_such_module.*": 1.0}
    with pytest.raises(VLVError) as err:
        cards.build(card, "model")
    msg = str(err.value)
    assert "model.no_such_module.*" in msg and "matches no parameter" in msg and "\n" not in msg
