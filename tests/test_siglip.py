"""The SigLIP family against transformers' PyTorch `SiglipModel`: pooled image and text embeddings,
logits with the learned bias, the sigmoid loss, the tokenizer's ids (SigLIP's sentencepiece
tokenizer, padded to the context length), the squash preprocessing, and a save that transformers
reopens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from saeft_jax import models
from saeft_jax.models import siglip
from saeft_jax.zeroshot import build_zeroshot_head

TEXTS = ["a photo of a dog.", "an image of the digit seven", "SigLIP pads to the context length!"]


def small_config(**vision) -> transformers.SiglipConfig:
    return transformers.SiglipConfig(
        text_config={
            "vocab_size": 300,
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "projection_size": 64,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            **vision,
        },
    )


def random_siglip(config: transformers.SiglipConfig, seed: int = 0) -> transformers.SiglipModel:
    """A SiglipModel whose every parameter is perturbed away from its init (LayerNorm scales not 1,
    biases not 0), so a mis-mapped leaf cannot go unnoticed."""
    torch.manual_seed(seed)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def write_sentencepiece_tokenizer(directory, vocab_size: int = 300) -> transformers.SiglipTokenizer:
    """SigLIP's own tokenizer class over a small sentencepiece model trained here."""
    import sentencepiece

    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(TEXTS * 20 + [f"a photo of the number {i}" for i in range(200)]))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "spiece"),
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tokenizer = transformers.SiglipTokenizer(vocab_file=str(directory / "spiece.model"))
    tokenizer.save_pretrained(directory)
    (directory / "corpus.txt").unlink()
    return tokenizer


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("siglip")
    tokenizer = write_sentencepiece_tokenizer(directory)
    config = small_config()
    config.text_config.pad_token_id, config.text_config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch_model = random_siglip(config)
    torch_model.save_pretrained(directory)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory, torch_model


def relative(ours, theirs) -> float:
    return float(np.max(np.abs(np.asarray(ours) - theirs)) / np.max(np.abs(theirs)))


def assert_matches_transformers(model: models.Model, torch_model: transformers.SiglipModel, batch: int = 2) -> None:
    rng = np.random.default_rng(0)
    size = torch_model.config.vision_config.image_size
    pixels = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    ids = model.tokenize(TEXTS[:batch]) if batch <= len(TEXTS) else None
    with torch.no_grad():
        nchw = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
        out = torch_model(input_ids=torch.from_numpy(ids).long(), pixel_values=nchw, return_loss=True)
        image = torch_model.get_image_features(pixel_values=nchw).pooler_output.numpy()
        text = torch_model.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output.numpy()
    ours_image, ours_text = model.encode_image(pixels), model.encode_text(ids)
    assert relative(ours_image, image) < 1e-5 and relative(ours_text, text) < 1e-5
    loss, logits = model.pretrain_loss(ours_image, ours_text, model.scale_params())
    assert relative(logits, out.logits_per_image.numpy()) < 1e-5
    assert float(loss) == pytest.approx(out.loss.item(), rel=1e-5)


def test_embeddings_logits_and_loss_equal_transformers(siglip_dir):
    directory, torch_model = siglip_dir
    model = models.load(directory)
    assert model.family.name == "siglip" and model.embed_dim == 64 and model.context_length == 16
    assert_matches_transformers(model, torch_model)


def test_tokenizer_ids_equal_transformers_padded_to_the_context_length(siglip_dir):
    directory, _ = siglip_dir
    model = models.load(directory)
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    assert isinstance(reference, transformers.SiglipTokenizer)
    expected = reference(TEXTS, padding="max_length", max_length=16, truncation=True)["input_ids"]
    np.testing.assert_array_equal(model.tokenize(TEXTS), np.asarray(expected))
    assert model.tokenize(["a"]).shape == (1, 16)  # SigLIP pools the last position: always the full length


def test_squash_preprocessing_from_the_processor_config(siglip_dir):
    directory, _ = siglip_dir
    spec = models.load(directory).image_spec
    assert (spec.size, spec.resize, spec.mean) == (32, "squash", (0.5, 0.5, 0.5))
    from PIL import Image

    from saeft_jax.data.preprocess import eval_transform

    image = np.random.default_rng(1).integers(0, 256, (40, 70, 3)).astype(np.uint8)
    processor = transformers.SiglipImageProcessor.from_pretrained(directory)
    expected = processor(Image.fromarray(image), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(eval_transform(spec)(image), expected, atol=2e-2)  # uint8 rounding of the resize


def test_zeroshot_head_carries_the_bias(siglip_dir):
    directory, torch_model = siglip_dir
    model = models.load(directory)
    head = build_zeroshot_head(model, [["a photo of a dog."], ["a photo of a cat."]], show_progress=False)
    text = np.asarray(model.encode_text(model.tokenize(["a photo of a dog.", "a photo of a cat."])))
    unit = text / np.linalg.norm(text, axis=-1, keepdims=True)
    np.testing.assert_allclose(head["W"], unit * np.exp(torch_model.logit_scale.item()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head["b"], [torch_model.logit_bias.item()] * 2, rtol=1e-6)


def test_save_reopens_in_transformers_and_here(siglip_dir, tmp_path):
    directory, torch_model = siglip_dir
    model = models.load(directory)
    model.save(tmp_path / "saved", format="hf")
    reopened = transformers.SiglipModel.from_pretrained(tmp_path / "saved").eval()
    assert_matches_transformers(models.load(tmp_path / "saved"), reopened)
    for name, tensor in torch_model.state_dict().items():
        np.testing.assert_allclose(reopened.state_dict()[name].numpy(), tensor.numpy(), rtol=1e-6, err_msg=name)
    with pytest.raises(models.CheckpointError, match="transformers' layout only"):
        model.save(tmp_path / "oc", format="open_clip")


def test_naflex_siglip2_is_refused_by_name(tmp_path):
    transformers.Siglip2Config().save_pretrained(tmp_path)
    with pytest.raises(models.CheckpointError, match="NaFlex SigLIP 2"):
        models.load(tmp_path)


def test_sigmoid_loss_with_several_positives_against_numpy():
    rng = np.random.default_rng(2)
    image, text = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    labels = np.array([0, 1, 0, 2, 1])
    positives = labels[:, None] == labels[None, :]
    loss, logits = siglip.sigmoid_loss(
        image.astype(np.float32), text.astype(np.float32), np.float32(1.5), np.float32(-2.0), positives
    )
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    z = np.exp(1.5) * unit(image) @ unit(text).T - 2.0
    expected = np.sum(np.log1p(np.exp(-np.where(positives, 1, -1) * z))) / 5
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(logits, z, rtol=1e-5)


@pytest.mark.slow
def test_b16_shaped_siglip_equals_transformers(tmp_path):
    config = transformers.SiglipConfig()  # google/siglip-base-patch16-224's shapes: 768 wide, 12 + 12 layers
    config.text_config.vocab_size = 300  # the tokenizer trained here; the towers keep their real size
    tokenizer = write_sentencepiece_tokenizer(tmp_path)
    config.text_config.pad_token_id, config.text_config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch_model = random_siglip(config)
    torch_model.save_pretrained(tmp_path)
    model = models.load(tmp_path)
    assert (model.embed_dim, model.vision_layers, model.context_length) == (768, 12, 64)
    assert_matches_transformers(model, torch_model, batch=1)


@pytest.mark.parametrize("arg", [None, "siglip2"])
def test_siglip_imagenet_config_is_complete(arg):
    from configs import siglip_vitb16
    from saeft_jax.config import finish

    config = finish(siglip_vitb16.get_config(arg)).config
    assert config.model.startswith("google/siglip") and config.saes.main.dict_size == 4 * 768
    assert config.finetune.methods.flyp.recipe == "flyp"


def test_a_failed_save_leaves_no_staging_directory(siglip_dir, tmp_path):
    model = models.load(siglip_dir[0])
    with pytest.raises(models.CheckpointError, match="transformers' layout only"):
        model.save(tmp_path / "out", format="open_clip")
    assert list(tmp_path.iterdir()) == []


def test_an_open_clip_config_beside_a_siglip_does_not_make_it_a_clip(siglip_dir, tmp_path):
    import shutil

    shutil.copytree(siglip_dir[0], tmp_path / "both")
    (tmp_path / "both" / "open_clip_config.json").write_text("{}")
    assert models.load(tmp_path / "both").family.name == "siglip"


@pytest.mark.parametrize(
    "processor, expected",
    [
        ({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32}}, ("crop", 0.48145466)),
        ({"image_processor_type": "SiglipImageProcessor", "size": {"height": 32, "width": 32}}, ("squash", 0.5)),
    ],
)
def test_processor_defaults_follow_the_processor_type(processor, expected):
    from saeft_jax.data.preprocess import ImageSpec

    spec = ImageSpec.from_hf_processor(processor)
    assert (spec.resize, spec.mean[0]) == expected and spec.size == 32


def test_a_processor_for_another_size_is_refused(siglip_dir, tmp_path):
    import shutil

    shutil.copytree(siglip_dir[0], tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").write_text(
        '{"image_processor_type": "SiglipImageProcessor", "size": {"height": 224, "width": 224}}'
    )
    with pytest.raises(models.CheckpointError, match="prepares 224-pixel images, but the model takes 32"):
        models.load(tmp_path / "m")
