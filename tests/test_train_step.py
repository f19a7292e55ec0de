"""The SAE-FT train step: loss composition, schedule, NaN guard, and 1 vs 8 devices."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, subprocess_env
from flax import traverse_util

from saeft_jax import parallel, regularizers
from saeft_jax.models.clip import CLIP, image_encoder, image_params, init_params
from saeft_jax.sae import model as sae
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.training.optim import make_optimizer, wiseft_schedule
from saeft_jax.training.step import init_state, make_loss, make_train_step

CLASSES, K = 3, 4


def setup_run(seed: int = 0):
    """A tiny CLIP whose trainable copy differs from the zero-shot one, a head, an SAE and a batch."""
    model = CLIP(TINY)
    zeroshot = image_params(init_params(model, jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    encoder = jax.tree.map(lambda p: p + 0.05 * rng.normal(size=p.shape).astype(np.float32), zeroshot)
    head = {"W": jnp.asarray(rng.normal(size=(CLASSES, 32)).astype(np.float32) * 10), "b": jnp.zeros(CLASSES)}
    frozen = {"encoder": zeroshot, "sae": FrozenSAE(sae.init_params(jax.random.key(seed + 1), 32, 128), K)}
    images = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 8).astype(np.int32)
    return image_encoder(model), {"encoder": encoder, "head": head}, frozen, images, labels


def batch(images, labels, teacher=None) -> dict:
    """A batch as the pipeline gives it to the step."""
    return {"images": images, "labels": labels, **({} if teacher is None else {"teacher": teacher})}


def penalty(name: str):
    return regularizers.get(name).bind({})


def test_loss_is_cross_entropy_plus_weighted_regularizer():
    model, params, frozen, images, labels = setup_run()
    loss, metrics = make_loss(model, penalty("sae_add_remove"), reg_lambda=70.0, label_smoothing=0.1)(
        params, frozen, batch(images, labels)
    )

    encode = lambda p: np.asarray(model.apply({"params": p}, images), np.float64)
    f, f0 = encode(params["encoder"]), encode(frozen["encoder"])
    logits = f / np.linalg.norm(f, axis=-1, keepdims=True) @ np.asarray(params["head"]["W"], np.float64).T
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    targets = np.full((8, CLASSES), 0.1 / CLASSES)
    targets[np.arange(8), labels] += 0.9
    ce = -(targets * log_probs).sum(-1).mean()
    expected_reg, _ = regularizers.sae_add_remove(
        jnp.asarray(f, jnp.float32), jnp.asarray(f0, jnp.float32), sae=frozen["sae"]
    )
    assert float(metrics["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(metrics["reg"]) == pytest.approx(float(expected_reg), rel=1e-4)
    assert float(loss) == pytest.approx(ce + 70.0 * float(expected_reg), rel=1e-4)
    assert float(metrics["reg"]) > 0 and "added_per_image" in metrics


def test_wiseft_schedule_matches_the_reference_formula():
    schedule = wiseft_schedule(1e-5, warmup_steps=500, total_steps=1000)
    for step in (0, 10, 499):
        assert float(schedule(step)) == pytest.approx(1e-5 * (step + 1) / 500)
    for step in (500, 600, 999):
        assert float(schedule(step)) == pytest.approx(0.5 * (1 + np.cos(np.pi * (step - 500) / 500)) * 1e-5)
    with pytest.raises(ValueError, match="must exceed warmup_steps"):
        wiseft_schedule(1e-5, 500, 400)


def make_step(model, regularizer="sae_add_remove", mesh=None, state_sharding=None):
    optimizer, schedule = make_optimizer(1e-3, total_steps=100, warmup_steps=2)
    entry = regularizers.get(regularizer)
    taps = entry.taps(TINY.vision.num_hidden_layers) if entry.taps else ()
    loss = make_loss(model, entry.bind({}), reg_lambda=10.0, taps=taps)
    mesh = mesh or parallel.data_mesh(jax.devices()[:1])
    return make_train_step(loss, optimizer, schedule, mesh, state_sharding), optimizer


def test_step_trains_and_reports():
    model, params, frozen, images, labels = setup_run()
    step, optimizer = make_step(model)
    state = init_state(params, optimizer)
    before = jax.tree.map(np.array, state["params"])
    losses = []
    for _ in range(5):
        state, metrics = step(state, frozen, batch(images, labels))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] and int(state["step"]) == 5 and bool(metrics["finite"])
    assert float(metrics["lr"]) == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 2 / 98)))
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state["params"], before)
    assert min(jax.tree.leaves(moved)) > 0  # encoder and head both trained


def test_non_finite_step_freezes_the_last_good_state():
    model, params, frozen, images, labels = setup_run()
    step, optimizer = make_step(model)
    state, _ = step(init_state(params, optimizer), frozen, batch(images, labels))
    good = jax.tree.map(np.array, state)
    poisoned = images.copy()
    poisoned[0, 0, 0, 0] = np.nan
    state, metrics = step(state, frozen, batch(poisoned, labels))
    assert not bool(metrics["finite"]) and int(state["bad_step"]) == 1
    state, metrics = step(state, frozen, batch(images, labels))  # a good batch afterwards changes nothing
    assert bool(metrics["finite"]) and int(state["bad_step"]) == 1
    frozen_state = jax.tree.map(np.array, state)
    frozen_state["bad_step"] = good["bad_step"]
    jax.tree.map(np.testing.assert_array_equal, frozen_state, good)


EIGHT_DEVICES = textwrap.dedent("""
    import sys, numpy as np, jax
    from test_train_step import batch, setup_run, make_step
    from saeft_jax import parallel
    from saeft_jax.training.step import init_state
    assert len(jax.devices()) == 8
    model, params, frozen, images, labels = setup_run()
    losses = {}
    runs = [(r, n, d, False) for r in sys.argv[2:] for n, d in (("one", jax.devices()[:1]), ("eight", jax.devices()))]
    for regularizer, name, devices, fsdp in runs + [("sae_add_remove", "fsdp", jax.devices(), True)]:
        mesh = parallel.data_mesh(devices)
        _, optimizer = make_step(model, regularizer, mesh)
        sharding = parallel.state_shardings(init_state(params, optimizer), mesh, fsdp=fsdp, min_size=4096)
        step, _ = make_step(model, regularizer, mesh, sharding)
        state, out = jax.device_put(init_state(params, optimizer), sharding), []
        for _ in range(3):
            state, metrics = step(state, frozen, batch(images, labels))
            out.append(float(metrics["loss"]))
        losses[regularizer + "_" + name] = out
    fc1 = state["params"]["encoder"]["vision_model"]["encoder"]["layers"]["0"]["mlp"]["fc1"]["kernel"]
    losses["fsdp_shard_rows"] = [fc1.addressable_shards[0].data.shape[1], fc1.shape[1]]
    np.savez(sys.argv[1], **losses)
""")


@pytest.mark.slow
def test_same_losses_on_one_and_eight_devices_and_with_fsdp(tmp_path):
    # sae_add_remove covers the SAE path, ldifs the token taps; `none` is a subset of both.
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = tmp_path / "losses.npz"
    names = ["sae_add_remove", "ldifs"]
    subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(out), *names], check=True, env=env, timeout=400)
    losses = np.load(out)
    for name in names:
        np.testing.assert_allclose(losses[name + "_eight"], losses[name + "_one"], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(losses["sae_add_remove_fsdp"], losses["sae_add_remove_one"], rtol=1e-5)
    shard, full = losses["fsdp_shard_rows"]
    assert shard * 8 == full  # FSDP really split the MLP kernel over the 8 devices


def test_fsdp_rule_splits_large_arrays_on_their_largest_divisible_dimension():
    from jax.sharding import PartitionSpec as P

    assert parallel.fsdp_spec((768, 3072), 8, min_size=2**18) == P(None, "data")
    assert parallel.fsdp_spec((3072, 768), 8, min_size=2**18) == P("data")
    assert parallel.fsdp_spec((768,), 8, min_size=2**18) == P()  # small: replicated
    assert parallel.fsdp_spec((1001, 999), 8, min_size=2**10) == P()  # nothing divides


def test_teacher_cache_is_exact_for_deterministic_inputs():
    model, params, frozen, images, labels = setup_run()
    loss = make_loss(model, penalty("sae_add_remove"), reg_lambda=10.0)
    cached = np.asarray(model.apply({"params": frozen["encoder"]}, images))  # what the features stage stores
    grad = jax.jit(jax.grad(lambda p, t: loss(p, frozen, batch(images, labels, t))[0]))
    live, replayed = grad(params, None), grad(params, cached)
    # Equal up to float rounding (the cache came from a separately compiled forward pass); some
    # gradients are exactly zero in theory (biases before a LayerNorm) and only noise in practice.
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(live))
    for a, b in zip(jax.tree.leaves(replayed), jax.tree.leaves(live)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
    step, optimizer = make_step(model)
    _, with_cache = step(init_state(params, optimizer), frozen, batch(images, labels, cached))
    _, without = step(init_state(params, optimizer), frozen, batch(images, labels))
    for name in ("loss", "ce", "reg", "grad_norm"):
        assert float(with_cache[name]) == pytest.approx(float(without[name]), rel=1e-5), name
    ldifs, _ = make_step(model, "ldifs")
    with pytest.raises(ValueError, match="ldifs needs the frozen encoder's tokens"):
        ldifs(init_state(params, optimizer), frozen, batch(images, labels, cached))


def test_accumulated_micro_batches_equal_the_large_batch_over_a_whole_run(tmp_path):
    """Batch 8 as 4 micro-batches of 2 against batch 8 at once, over a whole 6-step schedule:
    the same parameters, and the logged rate is the applied one, counted in updates."""
    from test_loop import batches

    from saeft_jax.training.loop import train_loop

    model, params, frozen, _, _ = setup_run()
    rng = np.random.default_rng(5)
    images = rng.normal(size=(24, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 24).astype(np.int32)
    loss = make_loss(model, penalty("sae_add_remove"), reg_lambda=10.0)
    mesh = parallel.data_mesh(jax.devices()[:1])
    finals, logged = {}, {}
    for micro in (1, 4):
        optimizer, schedule = make_optimizer(1e-3, total_steps=6, warmup_steps=2)
        step = make_train_step(loss, optimizer, schedule, mesh, accumulate_steps=micro)
        state, summary = train_loop(
            step,
            init_state(params, optimizer),
            frozen,
            batches(images, labels, 8),
            mesh=mesh,
            workdir=tmp_path / str(micro),
            total_steps=6,
            log_every=1,
            checkpoint_every=3,
            show_progress=False,
        )
        assert summary["steps"] == 6
        finals[micro] = traverse_util.flatten_dict(jax.device_get(state["params"]))
        logged[micro] = [
            json.loads(line) for line in (tmp_path / str(micro) / "metrics.jsonl").read_text().splitlines()
        ]
    # Key biases are skipped: softmax ignores them, their gradient is rounding noise that Adam
    # scales up to a full-size update.
    for path, value in finals[1].items():
        if path[-2:] != ("k_proj", "bias"):
            np.testing.assert_allclose(finals[4][path], value, rtol=2e-4, atol=2e-5, err_msg="/".join(path))
    rates = [record["lr"] for record in logged[4]]
    assert rates == pytest.approx([record["lr"] for record in logged[1]])
    assert rates == pytest.approx([float(schedule(i)) for i in range(6)])  # warm-up 2 updates, then cosine
    assert rates[-1] < 0.2 * rates[1]  # the cosine is near its end at the last update, not at the peak
    for name in ("loss", "ce", "reg"):
        assert [r[name] for r in logged[4]] == pytest.approx([r[name] for r in logged[1]], rel=1e-4), name


def test_a_batch_that_does_not_split_into_micro_batches_is_named():
    model, params, frozen, images, labels = setup_run()
    optimizer, schedule = make_optimizer(1e-3, total_steps=6, warmup_steps=2)
    mesh = parallel.data_mesh(jax.devices()[:1])
    step = make_train_step(
        make_loss(model, penalty("sae_add_remove"), reg_lambda=10.0), optimizer, schedule, mesh, accumulate_steps=3
    )
    with pytest.raises(ValueError, match="batch of 8 rows does not split into 3 micro-batches"):
        step(init_state(params, optimizer), frozen, batch(images, labels))
