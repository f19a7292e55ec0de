"""Config and command line: methods filled with every declared hyperparameter, each settable from
the command line; misspelt keys, bad files and bad values end with one paragraph and exit 2."""

from __future__ import annotations

import re
import subprocess
import textwrap

import pytest
from absl import flags
from conftest import run_main, smoke_config
from ml_collections import config_flags

from saeft_jax import methods, regularizers
from saeft_jax.config import finish, method, sae_settings
from saeft_jax.errors import ConfigError

EVERY_REGULARIZER = textwrap.dedent("""
    import ml_collections
    from saeft_jax import regularizers
    from saeft_jax.config import base_config, method, sae_settings

    def get_config():
        c = base_config()
        c.saes.basis = sae_settings(kind="pca", dict_size=16)  # what the pca regularizer reads
        c.finetune.methods = ml_collections.ConfigDict(
            {name: method(name, reg_lambda=1.0) for name in regularizers.REGISTRY})
        return c
""")


def parse(argv: list[str]):
    """`finish`'s `RunConfig` of what absl parses of `argv` as `python -m saeft_jax.main` would."""
    values, argv = flags.FlagValues(), ["prog", *argv]
    holder = config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=values, sys_argv=argv, lock_config=False, accept_new_attributes=True
    )
    values(argv)
    return finish(holder.value)


def changed(value):
    return (not value) if isinstance(value, bool) else 3 * value + 0.5


def test_every_declared_hyperparameter_can_be_set_from_the_command_line(tmp_path):
    path = tmp_path / "every.py"
    path.write_text(EVERY_REGULARIZER)
    overrides = {
        f"{name}.{hparam}": changed(default)
        for name, entry in regularizers.REGISTRY.items()
        for hparam, default in entry.hparams.items()
    }
    assert len(overrides) >= 14  # the sae_* regularizers take 3 or 4 each
    argv = [
        f"--config={path}",
        *(f"--config.finetune.methods.{k}={v}" for k, v in overrides.items()),
        "--config.finetune.methods.mse.reg_lambda=7",
    ]
    checked = parse(argv).methods  # parsed once, by finish
    assert checked["pca"].sae == "basis" and checked["sae_add_remove"].sae == "main"  # each the first of its kind
    for key, value in overrides.items():
        name, hparam = key.split(".")
        assert checked[name].hparams[hparam] == pytest.approx(value), key
        checked[name].penalty()  # binds: every value reaches the regularizer
    assert checked["mse"].reg_lambda == 7.0 and checked["sae_add_remove"].reg_lambda == 1.0  # a lambda per method


def test_methods_are_filled_with_the_declared_defaults():
    entry = method("sae_kl", reg_lambda=3.0, lambda_kl=0.5)
    given = {"recipe": "finetune", "regularizer": "sae_kl", "reg_lambda": 3.0, "sae": "", "checkpoint": ""}
    assert dict(entry) == {**given, "lambda_kl": 0.5}  # what it sets; finish fills the rest
    config = smoke_config()
    config.finetune.methods.kl = entry
    assert finish(config).config.finetune.methods.kl.to_dict() == {
        **given,
        "sae": "main",
        "lambda_l1": 1e-3,
        "lambda_kl": 0.5,
        "mu": 1.0,
        "reference_raw_inputs": False,
    }
    assert method("none").reg_lambda == 0.0
    with pytest.raises(ConfigError, match=r"regularizer 'mse' needs a positive weight reg_lambda.*none is given"):
        method("mse")
    with pytest.raises(ConfigError, match=r"0 would make it plain fine-tuning, which is method\('none'\)"):
        method("sae_add_remove", reg_lambda=0.0)
    with pytest.raises(ConfigError, match=r"unknown regularizer 'sae_addremove' \(did you mean 'sae_add_remove'\?\)"):
        method("sae_addremove", reg_lambda=1.0)
    with pytest.raises(ConfigError, match=r"has no hyperparameter lamda_add \('lamda_add': did you mean 'lambda_add'"):
        method("sae_add_remove", reg_lambda=1.0, lamda_add=3.0)


def test_normalize_contradicting_the_sae_is_refused_unless_named_as_the_reference_reproduction():
    with pytest.raises(ConfigError, match="has no hyperparameter normalize.*reference_raw_inputs=True gives it raw"):
        method("sae_add_remove", reg_lambda=70.0, normalize=False)
    raw = methods.from_config({"m": method("sae_add_remove", reg_lambda=70.0, reference_raw_inputs=True)})["m"]
    assert raw.reference_raw_inputs and raw.describe()["reference_raw_inputs"] is True


def assert_one_paragraph(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    paragraph = result.stderr.strip()
    assert paragraph.startswith("error: ") and "\n" not in paragraph, paragraph
    for needle in needles:
        assert needle in paragraph, paragraph


def test_a_misspelt_hyperparameter_exits_2_naming_it_before_anything_runs(tmp_path):
    workdir = tmp_path / "never"
    result = run_main(
        "--config=configs/demo.py:smoke",
        f"--workdir={workdir}",
        "--config.finetune.methods.sae_add_remove.lambda_addd=1",
    )
    assert_one_paragraph(
        result, "config.finetune.methods.sae_add_remove", "lambda_addd", "did you mean 'lambda_add'"
    )  # named by config.finish
    assert not workdir.exists()  # nothing ran
    result = run_main(
        "--config=configs/demo.py:smoke",
        f"--workdir={workdir}",
        "--config.finetune.methods.sae_add_remove.normalize=False",
    )
    assert_one_paragraph(result, "normalize", "reference_raw_inputs=True")


@pytest.mark.parametrize("case", ["missing", "syntax", "raises", "typo", "value", "argument"])
def test_config_files_that_do_not_load_exit_2_with_one_paragraph(tmp_path, case):
    files = {
        "syntax": "def get_config(:\n",
        "raises": "def get_config():\n    raise ValueError('no such setting here')\n",
        "typo": "from saeft_jax.config import base_config, method\n\ndef get_config():\n    c = base_config()\n"
        "    c.finetune.methods.sae_add_remove = method('sae_add_remove', reg_lambda=1.0, lamda_add=2.0)\n"
        "    return c\n",
    }
    path = tmp_path / "cfg.py"
    if case in files:
        path.write_text(files[case])
    arguments = {
        "missing": [f"--config={tmp_path / 'nope.py'}"],
        "value": ["--config.finetune.lr=fast"],
        "argument": ["--config=configs/demo.py:bogus"],
    }.get(case, [f"--config={path}"])
    result = run_main(*arguments, f"--workdir={tmp_path / 'w'}")
    expected = {
        "missing": ["no such config file", "nope.py"],
        "syntax": ["is not valid Python", "line 1"],
        "raises": ["cfg.py does not load", "ValueError: no such setting here"],
        "typo": ["lamda_add", "lambda_add"],
        "value": ["--config.finetune.lr=fast", "could not convert string to float: 'fast'", "of its type"],
        "argument": ["'smoke', 'sweep' and", "'siglip'", "bogus"],
    }
    assert_one_paragraph(result, *expected[case])
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["zeroshot", "..", "a/../../x", ".hidden"])
def test_method_names_must_be_plain_and_not_the_zero_shot_run(name):
    with pytest.raises(ConfigError, match=rf"{re.escape(repr(name))} cannot name a method"):
        methods.from_config({name: method("sae_add_remove", reg_lambda=70.0)})


def test_a_regularizer_switched_on_the_command_line_brings_its_own_defaults():
    config = parse(
        ["--config=configs/demo.py:smoke", "--config.finetune.methods.sae_add_remove.regularizer=sae_sparse"]
    )
    switched = config.methods["sae_add_remove"]
    assert switched.regularizer.name == "sae_sparse" and switched.reg_lambda == 100.0
    assert dict(switched.hparams) == dict(regularizers.get("sae_sparse").hparams)  # no lambda_add left over
    with pytest.raises(ConfigError, match=r"methods\.none: regularizer 'sae_add_remove' needs a positive weight"):
        parse(["--config=configs/demo.py:smoke", "--config.finetune.methods.none.regularizer=sae_add_remove"])
    config = parse(
        [
            "--config=configs/demo.py:smoke",
            "--config.finetune.methods.none.regularizer=sae_add_remove",
            "--config.finetune.methods.none.reg_lambda=30",
        ]
    )
    assert config.methods["none"].reg_lambda == 30.0
    with pytest.raises(ConfigError, match="has no hyperparameter lambda_add"):  # set by hand: not dropped
        parse(
            [
                "--config=configs/demo.py:smoke",
                "--config.finetune.methods.sae_add_remove.regularizer=sae_sparse",
                "--config.finetune.methods.sae_add_remove.lambda_add=3",
            ]
        )


BAD_FILES = {
    "misspelt key": "from saeft_jax.config import base_config\n\ndef get_config():\n    c = base_config()\n"
    "    c.finetune.lrr = 3e-5\n    return c\n",
    "key added behind the lock": "from saeft_jax.config import base_config\n\ndef get_config():\n"
    "    c = base_config()\n    with c.unlocked():\n        c.saes.main.kk = 4\n"
    "    return c\n",
    "key removed": "from saeft_jax.config import base_config\n\ndef get_config():\n    c = base_config()\n"
    "    with c.unlocked():\n        del c.finetune['lr']\n    return c\n",
    "a plain dict": "def get_config():\n    return {'model': 'x'}\n",
    "no get_config": "MODEL = 'x'\n",
}
SAYS = {
    "misspelt key": ["config.finetune.lrr is not a key", "did you mean config.finetune.lr?"],
    "key added behind the lock": ["config.saes.main.kk is not an SAE setting", "did you mean k?"],
    "key removed": ["lacks config.finetune.lr"],
    "a plain dict": ["returned a dict"],
    "no get_config": ["has no attribute 'get_config'", "defines get_config(arg=None)"],
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_config_files_with_wrong_keys_or_shapes_exit_2_naming_them(tmp_path, case):
    path = tmp_path / "cfg.py"
    path.write_text(BAD_FILES[case])
    result = run_main(f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert_one_paragraph(result, *SAYS[case])
    assert not (tmp_path / "w").exists()


def test_a_penalty_is_given_an_sae_of_the_kind_it_reads():
    config = smoke_config()
    config.finetune.methods.basis = method("pca", reg_lambda=1.0)
    with pytest.raises(
        ConfigError,
        match=r"regularizer 'pca' reads an SAE of kind 'pca', but config.saes has none; "
        r"add one, e.g. config.saes.pca = sae_settings\(kind='pca', dict_size=16\)",
    ):
        finish(config)
    config = smoke_config()
    config.saes.basis = sae_settings(kind="pca", dict_size=8)
    config.finetune.methods.wrong = method("sae_add_remove", reg_lambda=1.0, sae="basis")
    with pytest.raises(ConfigError, match=r"reads an SAE of kind 'topk', but config.saes.basis is of kind 'pca'"):
        finish(config)
    config = smoke_config()
    config.saes.basis = sae_settings(kind="pca", dict_size=8)
    config.finetune.methods.basis = method("pca", reg_lambda=1.0)
    finished = finish(config)
    assert finished.methods["basis"].sae == "basis" and finished.methods["sae_add_remove"].sae == "main"
    assert finished.config.finetune.methods.basis.sae == "basis"  # as config.json records it
    assert (
        finished.saes["basis"].k == 8 and finished.config.saes.basis.k == 8
    )  # every direction of a PCA basis is a code
    config = smoke_config()
    config.saes.main.kind = "svd"
    with pytest.raises(ConfigError, match=r"config.saes.main.kind is 'svd'"):
        finish(config)


def test_recipes_are_set_from_the_command_line_and_wrong_ones_refused_by_name(tmp_path):
    config = parse(
        [
            "--config=configs/demo.py:smoke",
            "--config.finetune.methods.sae_add_remove.recipe=lp_ft",
            "--config.probe.l2s=(1e-5,)",
        ]
    )
    checked = config.methods
    assert checked["sae_add_remove"].recipe.name == "lp_ft" and checked["sae_add_remove"].uses_probe
    assert checked["none"].recipe.name == "finetune" and tuple(config.config.probe.l2s) == (1e-5,)
    with pytest.raises(ConfigError, match=r"unknown recipe 'lpft' \(did you mean 'lp_ft'\?\)"):
        parse(["--config=configs/demo.py:smoke", "--config.finetune.methods.none.recipe=lpft"])
    with pytest.raises(ConfigError, match="leave its regularizer at 'none'"):
        method("mse", reg_lambda=1.0, recipe="linear_probe")
    with pytest.raises(ConfigError, match="takes no recipe"):
        method(checkpoint="/somewhere", recipe="flyp")
    with pytest.raises(ConfigError, match="contrastive loss scores every image"):
        parse(
            [
                "--config=configs/demo.py:smoke",
                "--config.finetune.methods.none.recipe=flyp",
                "--config.finetune.accumulate_steps=2",
            ]
        )
    with pytest.raises(ConfigError, match="probe.l2s"):
        parse(["--config=configs/demo.py:smoke", "--config.probe.l2s=()"])


def test_a_probe_with_several_weights_and_no_validation_split_exits_2_before_any_work(tmp_path):
    workdir = tmp_path / "never"
    result = run_main(
        "--config=configs/demo.py:smoke",
        f"--workdir={workdir}",
        "--config.finetune.val_dataset=",
        "--config.finetune.methods.none.recipe=linear_probe",
    )
    assert_one_paragraph(result, "config.probe.l2s lists 3 weights", "val_fraction", "--config.probe.l2s='(1e-5,)'")
    assert not workdir.exists()  # refused with the config, before the demo's data or model were made


def test_a_workdir_accepts_changes_to_keys_nothing_in_its_run_reads(tmp_path):
    from etils import epath

    from saeft_jax.errors import UsageError
    from saeft_jax.pipeline import check_config, record_config

    recorded = parse(["--config=configs/demo.py:smoke"]).config
    record_config(recorded, epath.Path(tmp_path))
    # no method reads the probe and no dataset is CIFAR-C: their keys change nothing
    check_config(
        parse(
            ["--config=configs/demo.py:smoke", "--config.probe.l2s=(1e-5,)", "--config.corruptions.severity=3"]
        ).config,
        epath.Path(tmp_path),
    )
    with pytest.raises(UsageError, match="different: finetune.lr"):
        check_config(parse(["--config=configs/demo.py:smoke", "--config.finetune.lr=0.5"]).config, epath.Path(tmp_path))
    probed = ["--config=configs/demo.py:smoke", "--config.finetune.methods.none.recipe=linear_probe"]
    record_config(parse(probed).config, epath.Path(tmp_path))
    with pytest.raises(UsageError, match="different: probe.l2s"):  # now the probe is read
        check_config(parse([*probed, "--config.probe.l2s=(1e-5,)"]).config, epath.Path(tmp_path))


def test_each_key_has_one_entry_with_its_default_and_rule_and_base_config_is_built_from_them():
    """`KEYS` is the one home of a key: base_config holds exactly its keys, with the defaults
    docs/method.md states; each default meets its own rule; a bad value is refused in the words of
    its entry."""
    from saeft_jax import config

    c = config.base_config()
    assert config._keys(c) == {key.name for key in config.KEYS}
    ft = c.finetune
    assert (ft.lr, ft.batch_size, ft.epochs, ft.warmup_steps, ft.weight_decay, ft.clip_norm) == (
        1e-5,
        512,
        10,
        500,
        0.1,
        1.0,
    )
    assert c.probe.l2s == (1e-4, 1e-5, 1e-6) and (c.saes.main.dict_size, c.saes.main.k) == (2048, 16)
    assert set(c.finetune.methods) == {"none", "sae_add_remove"} and c.finetune.methods.sae_add_remove.reg_lambda == 70
    for key in config.KEYS:
        assert key.rule is None or key.rule(key.default), key.name
    seed = next(key for key in config.KEYS if key.name == "seed")
    c.seed = -1
    with pytest.raises(
        ConfigError, match=re.escape(f"config.seed is -1, which cannot work: it must be {seed.wanted}.")
    ):
        finish(c)
