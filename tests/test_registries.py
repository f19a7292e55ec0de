"""One home per key: `config.finish` parses the methods and the SAEs once (a negative weight refused
there), recipes and SAE kinds come from registries that a test can extend, unknown keys in a file or
on the command line are named by `finish`, and a run's data dir is resolved in one place."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import run_main

from configs import demo
from saeft_jax import methods
from saeft_jax.config import finish, method, sae_settings
from saeft_jax.errors import ConfigError
from saeft_jax.sae import kinds
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.training import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_negative_reg_lambda_is_refused_where_reg_lambda_is_checked():
    with pytest.raises(ConfigError, match=r"reg_lambda is -1\.0: regularizer 'mse' needs a positive, finite weight"):
        method("mse", reg_lambda=-1.0)
    written_by_hand = {"regularizer": "sae_add_remove", "reg_lambda": -70.0}  # not through method(...)
    with pytest.raises(ConfigError, match=r"config\.finetune\.methods\.m\.reg_lambda is -70\.0"):
        methods.from_config({"m": written_by_hand})  # the parse finish makes, before any later check
    config = demo.get_config("smoke")
    config.finetune.methods.sae_add_remove.reg_lambda = -70.0
    with pytest.raises(ConfigError, match=r"config\.finetune\.methods\.sae_add_remove\.reg_lambda is -70\.0"):
        finish(config)
    assert finish(demo.get_config("smoke")).methods["sae_add_remove"].reg_lambda == 100.0


def test_finish_returns_what_the_run_reads_parsed_once():
    checked = finish(demo.get_config("smoke"))
    assert list(checked.methods) == ["none", "sae_add_remove"] and list(checked.saes) == ["main"]
    sae = checked.saes["main"]
    assert (sae.kind, sae.dict_size, sae.k, sae.epochs) == ("topk", 256, 8, 10)  # configs/demo.py:smoke
    assert checked.config.saes.main.to_dict() == {**kinds.DEFAULTS, **vars(sae)}  # config.json records the same
    with pytest.raises(TypeError):
        checked.methods["other"] = checked.methods["none"]  # read-only: one copy


@pytest.fixture
def head_only_recipe():
    """A recipe registered from outside the package: the head alone, from the zero-shot head, by
    cross-entropy on the frozen encoder's embeddings; no gradient accumulation."""

    @recipes.register(
        description="the head alone, from the zero-shot head",
        label="head only",
        no_accumulation="test reason",
    )
    def head_only(inputs: recipes.Inputs) -> recipes.Training:
        return recipes.Training({"head": inputs.zeroshot_head()}, loss=None)

    yield
    del recipes.REGISTRY["head_only"]


def test_a_recipe_registered_from_outside_is_a_method_like_the_built_in_ones(head_only_recipe):
    config = demo.get_config("smoke")
    config.finetune.methods.head = method(recipe="head_only")
    checked = finish(config)
    head = checked.methods["head"]
    assert head.recipe is recipes.get("head_only") and not head.uses_probe
    assert head.label() == "`head` (head only)" and head.describe()["recipe"] == "head_only"
    assert checked.config.finetune.methods.head.recipe == "head_only"
    fake = recipes.Inputs(
        model=None,
        penalty=head.penalty(),
        reg_lambda=head.reg_lambda,
        taps=(),
        label_smoothing=0.0,
        prompts=[["a"]],
        templates=1,
        flyp_logit_scale="clip",
        show_progress=False,
        zeroshot_head=lambda: {"W": np.eye(2)},
        probe_head=lambda: pytest.fail("the recipe does not read the probe"),
    )
    assert head.recipe.build(fake).params["head"]["W"].tolist() == [[1, 0], [0, 1]]
    config = demo.get_config("smoke")
    config.finetune.methods.head = method(recipe="head_only")
    config.finetune.accumulate_steps = 2
    with pytest.raises(ConfigError, match="config.finetune.methods.head is head only, whose test reason"):
        finish(config)
    with pytest.raises(ValueError, match="recipe 'head_only' is registered already"):
        recipes.register("head_only", description="again")(lambda inputs: None)


@pytest.fixture
def random_kind():
    """An SAE kind registered from outside the package: `dict_size` random unit directions."""

    def make(features, settings):
        rng = np.random.default_rng(0)
        atoms = rng.normal(size=(settings["dict_size"], features.shape[1])).astype(np.float32)
        atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
        params = {"W_enc": atoms.T, "W_dec": atoms, "b_pre": np.zeros(features.shape[1], np.float32)}
        return FrozenSAE(params, settings["k"])

    def rules(where, settings):
        if settings["dict_size"] > 64:
            raise ConfigError(f"{where}.dict_size is {settings['dict_size']}; a random basis takes at most 64")
        return {**settings, "k": min(settings["k"], settings["dict_size"])}

    kinds.register(kinds.SAEKind("random", "random unit directions", ("dict_size", "k"), False, make, rules))
    yield
    del kinds.REGISTRY["random"]


def test_an_sae_kind_registered_from_outside_is_checked_made_and_not_trained(random_kind):
    config = demo.get_config("smoke")
    config.saes.basis = sae_settings(kind="random", dict_size=4)
    checked = finish(config)
    assert checked.saes["basis"].k == 4 == checked.config.saes.basis.k  # its rule filled k
    assert not kinds.get("random").trained  # so preflight asks no batch of it
    features = np.random.default_rng(1).normal(size=(10, 6)).astype(np.float32)
    sae = kinds.get("random").make(features, vars(checked.saes["basis"]))
    assert sae.dict_size == 4 and np.allclose(np.linalg.norm(np.asarray(sae.atoms), axis=1), 1.0)
    config = demo.get_config("smoke")
    config.saes.basis = sae_settings(kind="random", dict_size=65)
    with pytest.raises(ConfigError, match="config.saes.basis.dict_size is 65; a random basis takes at most 64"):
        finish(config)
    config = demo.get_config("smoke")
    config.saes.main.kind = "randm"
    with pytest.raises(ConfigError, match=r"config\.saes\.main\.kind is 'randm'.*'random' \(random unit directions\)"):
        finish(config)


@pytest.mark.parametrize(
    "override, says",
    [
        ("--config.finetune.lrr=1", "config.finetune.lrr is not a key of the run configuration (did you mean "),
        ("--config.sed=3", "config.sed is not a key of the run configuration (did you mean config.seed?)"),
        ("--config.saes.main.kk=4", "config.saes.main.kk is not an SAE setting (did you mean k?)"),
        # a group the config lacks: ml_collections refuses the override before finish; main names it alike
        (
            "--config.finetun.lr=1",
            "config.finetun.lr is not a key of the run configuration (did you mean config.finetune.lr?)",
        ),
        ("--config.foo.bar=1", "config.foo.bar is not a key of the run configuration;"),
        ("--config.stages.x=1", "config.stages is a value, not a group of keys; set it as --config.stages=<value>."),
    ],
)
def test_unknown_keys_on_the_command_line_are_named_by_finish(tmp_path, override, says):
    result = run_main("--config=configs/demo.py:smoke", f"--workdir={tmp_path / 'w'}", override)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == f"error: {result.stderr.strip()[len('error: ') :]}"  # one paragraph
    assert says in result.stderr and not (tmp_path / "w").exists()


def test_an_unknown_key_in_a_config_file_is_named_by_finish(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        "from saeft_jax.config import base_config\n\ndef get_config():\n    c = base_config()\n"
        "    c.evaluate.alpha = (0.5,)\n    return c\n"
    )
    result = run_main(f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "config.evaluate.alpha is not a key of the run configuration (did you mean config.evaluate.alphas?)" in (
        result.stderr
    )


def test_the_data_dir_is_resolved_once_and_carried_to_every_spec_and_source(tmp_path, monkeypatch):
    from saeft_jax.data import locations, sources
    from saeft_jax.stages.context import Run

    assert locations.resolve_data_dir("") == os.path.expanduser(locations.DEFAULT_DATA_DIR)
    assert locations.resolve_data_dir("~/d") == os.path.expanduser("~/d")
    assert locations.resolve_data_dir("gs://bucket/d") == "gs://bucket/d"
    config = demo.get_config("smoke")
    config.data_dir = str(tmp_path)
    run = Run(finish(config), tmp_path / "w")
    spec = run.spec("objectnet")  # a prepared dataset: its source reads the spec's data dir
    assert run.data_dir == spec.data_dir == str(tmp_path)
    with pytest.raises(sources.DatasetNotPrepared, match=f"--data_dir={tmp_path}"):
        run.source(spec)
    with pytest.raises(KeyError, match=f"no dataset 'mine' is prepared in {tmp_path}"):
        run.spec("mine/train")  # a folder dataset's spec is looked up there too
