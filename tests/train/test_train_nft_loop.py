"""DiffusionNFT from the trainer: ``firered train tiny_nft`` on synthetic prompts whose checks grade the results.

The data is ``firered_bench``'s (each manifest line carries the ``spec`` its checks read), one-source tasks only.
The tiny run must log the reward and the NFT terms, and they must obey the loss's algebra: while the old policy's
decay is 0 (the first ``decay_flat`` steps) the old policy *is* the trained one, so the implicit positive and
negative policies coincide (``positive == negative``, ``old_deviation == 0``) and the loss is ``adv_clip / beta``
times that error (the KL term is 0 on step 1, where the zero-initialised LoRA equals its reference). With a decay
the old policy lags behind. A SIGKILLed run resumes bit-exactly (the old policy is in the checkpoint), and two
processes under ``accelerate launch`` train what one process trains with the same global batch.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from firered_bench.generate.generator import GeneratorConfig
from firered_bench.generate.writer import write_dataset
from firered_core.config import ConfigError
from firered_train.config import load_config
from firered_train.loop.nft_rewards import NFTRewards
from firered_train.loop.trainer import NFT_METRICS
from firered_train.data.records import read_records
from firered_train.objectives import OldPolicy, old_policy_decay
from firered_train.config import NFTConfig

from tests.chat_server import ChatServer, chat_answer
from tests.train_fixtures import cli, cli_env, free_port, read_tensors, sigkill_after

ONE_SOURCE = ("add", "remove", "color", "replace", "background")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nft")
    return write_dataset(root / "data", "train", 12, seed=5, config=GeneratorConfig(tasks=ONE_SOURCE))


def _args(manifest: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [f"--data.path={manifest}", f"--output_dir={out}", f"--schedule.max_steps={steps}",
            "--logging.validation_every=0", *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


@pytest.mark.slow
def test_tiny_nft_logs_rewards_and_terms_that_obey_the_loss(prompts: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny_nft")
    c_over_b = cfg.nft.adv_clip / cfg.nft.beta
    out = tmp_path / "run"
    subprocess.run(cli("train", "tiny_nft", *_args(prompts, out, 3)), check=True, env=cli_env(), timeout=600)
    rows = [r for r in _lines(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(NFT_METRICS) <= r.keys()
        assert 0.0 <= r["reward"] <= 1.0 and 0.0 <= r["reward_max"] <= 1.0
        # decay 0 (decay_flat steps): the old policy is the trained one, v+ = v- = v_theta
        assert r["old_deviation"] == 0.0
        assert r["positive"] == pytest.approx(r["negative"], rel=1e-6)
        assert r["policy"] == pytest.approx(c_over_b * r["positive"], rel=1e-5)
        assert r["loss"] == pytest.approx(r["policy"] + cfg.nft.kl_weight * r["kl"], rel=1e-6)
    assert rows[0]["kl"] == 0.0  # zero-initialised LoRA: the trained network is its reference
    assert (out / "lora.safetensors").is_file()


@pytest.mark.slow
def test_with_a_decay_the_old_policy_lags_behind(prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ("--nft.decay_flat=0", "--nft.decay_rate=0.5", "--nft.decay_cap=0.9", "--optim.lr=1e-2")
    subprocess.run(cli("train", "tiny_nft", *_args(prompts, out, 3, *extra)), check=True, env=cli_env(), timeout=600)
    rows = [r for r in _lines(out / "metrics.jsonl") if "loss" in r]
    assert rows[0]["old_deviation"] == 0.0  # the first round: nothing trained yet
    assert rows[2]["old_deviation"] > 0.0  # d = 0.5 after the first update: the old weights trail the trained ones


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_exact(prompts: Path, tmp_path: Path) -> None:
    steps, every = 8, 2
    extra = ("--nft.decay_flat=0", "--nft.decay_rate=0.3", f"--checkpoint.every_steps={every}",
             "--checkpoint.keep_last=2", "--optim.lr=1e-2")
    env = cli_env()
    subprocess.run(cli("train", "tiny_nft", *_args(prompts, tmp_path / "straight", steps, *extra)), check=True,
                   env=env, timeout=600)
    resumed = _args(prompts, tmp_path / "resumed", steps, *extra)
    kill_after = random.Random(time.time_ns()).randint(every + 1, steps - 2)
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    killed_at = sigkill_after(cli("train", "tiny_nft", *resumed), env, metrics, kill_after)
    subprocess.run(cli("train", "tiny_nft", *resumed, "--resume", "latest"), check=True, env=env, timeout=600)

    final = f"checkpoints/step-{steps:06d}"
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = read_tensors(tmp_path / "straight" / final / name)
        b = read_tensors(tmp_path / "resumed" / final / name)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {len(different)} tensors differ after a kill at step {killed_at}"
    straight = {r["step"]: r for r in _lines(tmp_path / "straight" / "metrics.jsonl") if "loss" in r}
    again = {r["step"]: r for r in _lines(metrics) if "loss" in r}
    assert sorted(again) == list(range(1, steps + 1)), "metrics log not rewound"
    for step in range(1, steps + 1):  # same rounds: same rewards, same old policy (old_deviation), same loss
        for name in ("loss", "reward", "old_deviation"):
            assert again[step][name] == straight[step][name], (step, name, killed_at)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(prompts: Path, tmp_path: Path) -> None:
    env = cli_env(threads=1)
    # A random tiny model's results often all score 0: such a step's gradient is rounding noise (norm ~1e-9),
    # which Adam's default eps would blow up to full-size updates of arbitrary sign, different for any other order
    # of float sums. An eps of 1e-4 leaves noise-level gradients noise-level updates and real ones (~1e-3) intact.
    extra = ("--nft.decay_flat=0", "--nft.decay_rate=0.3", "--optim.lr=1e-2", "--optim.eps=1e-4",
             "--checkpoint.every_steps=100",
             "--data.sampler.source_count_weights={0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0}")
    steps = 3
    subprocess.run(cli("train", "tiny_nft", *_args(prompts, tmp_path / "one", steps, *extra),
                       "--data.sampler.token_budget=512"), check=True, env=env, timeout=600)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), "-m", "firered_train.cli", "train", "tiny_nft",
              *_args(prompts, tmp_path / "two", steps, *extra), "--data.sampler.token_budget=256"]
    done = subprocess.run(launch, env=env, timeout=900, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (read_tensors(tmp_path / run / "lora.safetensors") for run in ("one", "two"))
    assert one.keys() == two.keys()
    moved = max(float(t.abs().max()) for k, t in one.items() if "lora_B" in k or "lora_up" in k)
    worst = max((float((one[k] - two[k]).abs().max()), k) for k in one)
    assert moved > 1e-4, "training did not change the adapters"
    assert worst[0] < 1e-5, f"1 vs 2 processes differ by {worst[0]:.3g} in {worst[1]} (training moved {moved:.3g})"
    rows_one = {r["step"]: r for r in _lines(tmp_path / "one" / "metrics.jsonl") if "loss" in r}
    rows_two = {r["step"]: r for r in _lines(tmp_path / "two" / "metrics.jsonl") if "loss" in r}
    for step in range(1, steps + 1):  # the rewards of the whole global batch, gathered over both ranks
        assert rows_two[step]["reward"] == pytest.approx(rows_one[step]["reward"], abs=1e-9)


def test_old_policy_follows_the_decay_schedule_and_swaps_bitwise() -> None:
    config = NFTConfig(decay_rate=0.25, decay_flat=1, decay_cap=0.6)
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    old = OldPolicy({"w": weight}, config)
    expected = weight.detach().clone()
    for step in range(1, 6):
        with torch.no_grad():
            weight.add_(1.0)
        d = old_policy_decay(step - 1, config)  # the decay after the updates done before this one
        expected = d * expected + (1 - d) * weight.detach()
        old.update(step)
        assert torch.allclose(old.shadow["w"], expected), step
    before = weight.detach().clone()
    with old.swapped():
        assert torch.equal(weight.detach(), old.shadow["w"])
    assert torch.equal(weight.detach(), before)
    restored = OldPolicy({"w": weight}, config)
    restored.load_state_dict(old.state_dict())
    assert torch.equal(restored.shadow["w"], old.shadow["w"]) and restored.n_updates == 5


def test_verifiable_reward_needs_a_spec_for_every_prompt(prompts: Path, tmp_path: Path) -> None:
    records = read_records("jsonl", str(prompts))
    rewards = NFTRewards(records, reward="verifiable", mode="graded", manifest=str(prompts))
    assert set(rewards.specs) == {r.id for r in records}
    stripped = tmp_path / "no_spec.jsonl"
    lines = [json.loads(line) for line in prompts.read_text().splitlines()]
    stripped.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "spec"}) + "\n" for line in lines))
    with pytest.raises(ValueError, match="have no 'spec'"):
        NFTRewards(records, reward="verifiable", mode="graded", manifest=str(stripped))


def test_closeness_weight_adds_to_the_results_nearer_the_target_than_picture_1(prompts: Path) -> None:
    records = read_records("jsonl", str(prompts))
    plain = NFTRewards(records, reward="verifiable", mode="pass", manifest=str(prompts))
    mixed = NFTRewards(records, reward="verifiable", mode="pass", manifest=str(prompts), closeness=0.5)
    sources, target = records[0].open_images()
    group = [target, sources[0]]  # the target itself passes and is nearer; Picture 1 is neither
    base, added = plain.grade([0], [group]), mixed.grade([0], [group])
    assert base.tolist() == [[1.0, 0.0]]
    assert added.tolist() == [[1.5, 0.0]]


@pytest.mark.parametrize("override, key", [
    ("--data.cache_dir=cache", "data.cache_dir"),
    ("--objective.rollout.prob=0.5", "objective.rollout.prob"),
    ("--nft.group_size=1", "nft.group_size"),
    ("--nft.reward=judge", "nft.reward"),
    ("--nft.sampler=heun", "nft.sampler"),
    ("--nft.closeness_weight=-1", "nft.closeness_weight"),
    ("--nft.reward=judge", "nft.judge_endpoint"),
    ("--nft.reward=judge --nft.judge_endpoint=http://127.0.0.1:9/v1 --nft.judge_passes=0", "nft.judge_passes"),
    ("--nft.reward=ocr --nft.closeness_weight=0.5", "nft.closeness_weight"),
    ("--nft.keep_unedited=1", "nft.keep_unedited"),
    ("--nft.reward=judge --nft.judge_endpoint=http://127.0.0.1:9/v1 --nft.judge_local=judge", "nft.judge_local"),
])
def test_nft_config_errors_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny_nft", override.split())


def test_the_config_names_the_rewards_and_modes_the_scorers_have() -> None:
    from firered_bench.grade.reward import REWARD_MODES
    from firered_train.config.nft_section import NFT_REWARD_MODES, NFT_REWARDS
    from firered_train.prefs.scoring import REWARDS

    assert NFT_REWARDS == tuple(REWARDS) and NFT_REWARD_MODES == REWARD_MODES


@pytest.mark.slow
def test_the_judge_reward_grades_every_result_through_the_chat_server(prompts: Path, tmp_path: Path) -> None:
    """A loopback OpenAI-compatible server rates every result 7 of 10: the logged reward is 0.7, each result was
    sent once with its source and instruction, the key came from the environment; with the server gone the run
    fails naming it (never a zero reward)."""
    instructions = {json.loads(line)["instruction"] for line in prompts.read_text().splitlines()}
    env = {**cli_env(), "FIRERED_JUDGE_API_KEY": "sekrit"}
    with ChatServer(reply=chat_answer("The colour is right, the rest is kept. Rating: 7")) as server:
        out = tmp_path / "run"
        subprocess.run(cli("train", "tiny_nft", *_args(prompts, out, 2), "--nft.reward=judge",
                           f"--nft.judge_endpoint={server.url}", "--nft.judge_model=judge-test"),
                       check=True, env=env, timeout=600)
    rows = [r for r in _lines(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["reward"] == pytest.approx(0.7) for r in rows)
    assert server.requests and len(server.requests) % 4 == 0  # group_size 4: whole groups, one pass each
    for path, headers, body in server.requests:
        assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sekrit"
        assert body["model"] == "judge-test"
        parts = body["messages"][-1]["content"]
        assert sum(p["type"] == "image_url" for p in parts) == 2  # Picture 1 and the result
        assert any(i in p.get("text", "") for p in parts for i in instructions)
    gone = f"http://127.0.0.1:{free_port()}/v1"
    failed = subprocess.run(cli("train", "tiny_nft", *_args(prompts, tmp_path / "gone", 1), "--nft.reward=judge",
                                f"--nft.judge_endpoint={gone}"), env=env, timeout=600, capture_output=True,
                            text=True)
    assert failed.returncode != 0 and gone.removesuffix("/v1") in failed.stderr
    metrics = tmp_path / "gone" / "metrics.jsonl"
    assert not metrics.exists() or not [r for r in _lines(metrics) if "loss" in r]  # no step trained on zeros


def _policy_samples(prompts: list[int], k: int):  # -> PolicySamples
    from firered_train.loop.batch import TrainBatch
    from firered_train.loop.policy_samples import PolicySamples

    g = len(prompts)
    latents = torch.randn(g, k, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = TrainBatch(step=7, indices=tuple(i * k + j for i in prompts for j in range(k)),
                       ids=tuple(f"s{i}" for i in prompts for _ in range(k)), target=latents.flatten(0, 1),
                       sources=(), embeds=torch.zeros(g * k, 3, 5), mask=None, languages=("en",) * (g * k))
    return PolicySamples(latents=latents, batch=batch, prompts=tuple(prompts), sigmas=torch.zeros(2))


def test_training_levels_do_not_depend_on_the_process_count() -> None:
    """Prompts a, b, c, d in one process, or (a, c) on rank 0 and (b, d) on rank 1 (the bucket sampler deals the
    global batch out by position): every result gets the same level and noise either way."""
    from firered_train.config import TimestepConfig
    from firered_train.loop.nft_step import result_major_draws
    from firered_train.loop.step import seeded_levels, seeded_noise
    from firered_train.objectives import TimestepSampler

    sampler, k = TimestepSampler(TimestepConfig(stratification="global")), 3

    def run(prompts: list[int], rank: int, world: int) -> dict[tuple[int, int], tuple[float, torch.Tensor]]:
        samples = _policy_samples(prompts, k)
        s, noise = result_major_draws(samples, lambda b: (
            seeded_levels(sampler, b, 0, 2, step=5, rank=rank, world_size=world), seeded_noise(b, 0, 2)))
        return {(p, j): (float(s[g * k + j]), noise[g * k + j]) for g, p in enumerate(prompts) for j in range(k)}

    one = run([10, 11, 12, 13], 0, 1)
    two = {**run([10, 12], 0, 2), **run([11, 13], 1, 2)}
    assert one.keys() == two.keys()
    for key in one:
        assert one[key][0] == two[key][0], key
        assert torch.equal(one[key][1], two[key][1]), key
    assert len({round(v[0], 9) for v in one.values()}) == len(one)  # stratified: every result its own level


@pytest.mark.skipif(not __import__("firered_core.default", fromlist=["is_available"]).is_available(),
                    reason="the embedded default model is not in this checkout")
def test_keep_unedited_grades_each_result_with_its_own_picture_1_outside_the_edit(prompts: Path) -> None:
    """``nft.keep_unedited``: the round's results keep their own prompt's Picture 1 bit for bit away from the area
    they changed, and the decoded pixels inside it; without it the VAE's round trip is graded everywhere."""
    from firered_core.default import load_default_pipeline
    from firered_core.images import to_tensor
    from firered_core.preserve import PreserveConfig
    from firered_train.loop.nft_rewards import decode_results

    vae = load_default_pipeline().vae
    records = read_records("jsonl", str(prompts))[:2]
    sources = [r.open_images()[0][0] for r in records]
    edited = []
    for source in sources:
        pixels = to_tensor(source, *source.size)
        pixels[..., 40:56, 40:56] = 1.0  # a white square: the "edit", bottom right
        edited.append(pixels)
    with torch.no_grad():
        latents = vae.encode(torch.cat(edited))
    kept = decode_results(vae, latents, sources, PreserveConfig())
    plain = decode_results(vae, latents)
    for source, keep, raw in zip(sources, kept, plain, strict=True):
        far = (slice(0, 24), slice(0, 24))  # top left, far from the square and its margin
        assert np.array_equal(np.asarray(keep)[far], np.asarray(source)[far])
        assert not np.array_equal(np.asarray(raw)[far], np.asarray(source)[far])
        core = (slice(44, 52), slice(44, 52))
        assert np.array_equal(np.asarray(keep)[core], np.asarray(raw)[core])
    # the round pairs each of the K results of a prompt with that prompt's source (swapped, the grades differ)
    rewards = NFTRewards(records, reward="verifiable", mode="graded", manifest=str(prompts),
                         preserve=PreserveConfig())
    grades = rewards.score(vae, [0, 1], latents[:, None].expand(2, 2, *latents.shape[1:]))
    assert torch.equal(grades, rewards.grade([0, 1], [[kept[0]] * 2, [kept[1]] * 2]))
    swapped = decode_results(vae, latents, sources[::-1], PreserveConfig())
    assert not torch.equal(grades, rewards.grade([0, 1], [[swapped[0]] * 2, [swapped[1]] * 2]))
    with pytest.raises(ValueError, match="2 results but 1 sources"):
        decode_results(vae, latents, sources[:1], PreserveConfig())


def test_a_local_judge_folder_grades_the_round_from_its_logits(prompts: Path, tmp_path: Path) -> None:
    """``nft.judge_local`` (and ``--judge-local`` of prefs / mine): a Qwen2.5-VL folder rated in this process;
    the round's rewards are that judge's scores of each result against its own sources and instruction."""
    pytest.importorskip("transformers")
    import argparse

    from firered_core.rewards import TransformersJudge
    from firered_train.loop.nft_rewards import nft_judge
    from firered_train.prefs.command import judge_from_args
    from tests.encoder_fixtures import save_tiny_qwen_vl_folder

    folder = save_tiny_qwen_vl_folder(tmp_path / "judge")
    judge = nft_judge(NFTConfig(reward="judge", judge_local=str(folder)))
    assert isinstance(judge, TransformersJudge)
    records = read_records("jsonl", str(prompts))
    rewards = NFTRewards(records, reward="judge", mode="pass", manifest=None, judge=judge)
    sources, target = records[0].open_images()
    group = [target, sources[0]]
    graded = rewards.grade([0], [group])
    expected = judge.scores([sources, sources], group, [records[0].instruction] * 2)
    assert graded.tolist() == [expected] and all(0 <= s <= 1 for s in expected) and expected[0] != expected[1]
    args = argparse.Namespace(reward="judge", judge_endpoint="", judge_local=str(folder), judge_model="",
                              judge_passes=1, judge_timeout=1.0, judge_key_env="X")
    assert isinstance(judge_from_args(args), TransformersJudge)
    with pytest.raises(ValueError, match="not both"):
        judge_from_args(argparse.Namespace(**{**vars(args), "judge_endpoint": "http://127.0.0.1:9/v1"}))
