"""LM trainer pieces and the CLI end to end on the tiny embedded model (seconds each)."""

import json
import subprocess
import sys

import pytest
import torch

from policyopt import algos
from policyopt.cli.main import main
from policyopt.errors import UserError
from policyopt.lm.rewards import RewardError, RewardSet
from policyopt.lm.tasks import load_rows, load_task

transformers = pytest.importorskip("transformers")

FAST = [
    "--set",
    "sft_steps=20",
    "--set",
    "eval_size=16",
    "--set",
    "prompts_per_step=4",
    "--set",
    "group_size=4",
    "--set",
    "eval_k=2",
    "--no-progress",
]

# the lean decoder / padding-free forward against transformers on each device (cuda skipped without a GPU)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def _sample_and_recompute(model, tok, prompts, G, T, seed):
    """``G`` sampled completions per prompt (temperature 0.7, ``T`` new tokens, torch seed ``seed``), and their
    train-time log-probs ``(B, T)`` recomputed with ``token_logp``; returns ``(rollout, logp, completion_mask)``."""
    from policyopt.lm.rollout import collate, generate, token_logp

    torch.manual_seed(seed)
    ro = generate(model, tok, prompts, torch.arange(len(prompts)), 0, G, temperature=0.7, top_p=1.0, max_new_tokens=T)
    dev = next(model.parameters()).device
    ids, attn, pos, cmask, P = collate(ro.prompt_ids, ro.completion_ids, tok.pad_token_id, T)
    with torch.no_grad():
        lp, _ = token_logp(model, ids.to(dev), attn.to(dev), pos.to(dev), P, 0.7)
    return ro, lp.cpu(), cmask


def test_builtin_rewards_and_components():
    rs = RewardSet({"exact_match": 1.0, "format": 0.5})
    total, comps = rs(["1+2=", "1+2=", "1+2="], ["3", "4", "x3"], {"answer": ["3", "3", "3"]})
    assert comps.tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    assert total.tolist() == [1.5, 0.5, 0.0]
    rs = RewardSet({"numeric": 1.0})
    assert rs(["q", "q"], ["about 3.0000001 I think", "2"], {"answer": ["3", "3"]})[0].tolist() == [1.0, 0.0]


def test_math_verify_reward():
    pytest.importorskip("math_verify")
    rs = RewardSet({"math_verify": 1.0})
    total, _ = rs(["q", "q"], ["$\\frac{1}{2}$", "$0.3$"], {"answer": ["0.5", "0.5"]})
    assert total.tolist() == [1.0, 0.0]


def bad_reward(prompts, completions, **_):
    return [1.0 / (len(c) - 2) for c in completions]  # ZeroDivisionError on 2-char completions


def test_reward_error_names_function_and_sample():
    rs = RewardSet({"tests.test_lm_trainer:bad_reward": 1.0})
    with pytest.raises(RewardError, match=r"bad_reward.*ZeroDivisionError.*sample 1 .*completion='ab'"):
        rs(["p0", "p1"], ["abc", "ab"], {})
    with pytest.raises(UserError, match="unknown reward function"):
        RewardSet({"nope": 1.0})


def test_tasks_split_and_jsonl(tmp_path):
    t = load_task("addition", None, 0, 100)
    assert len(t.test) == 100 and not {r["prompt"] for r in t.test} & {r["prompt"] for r in t.train}
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"{i}*2=", "answer": str(2 * i)}) for i in range(10)))
    assert len(load_rows(p)) == 10
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(UserError, match="needs 'prompt' and 'answer'"):
        load_rows(tmp_path / "bad.jsonl")


def test_sampler_and_train_time_logprobs_agree():
    from policyopt.lm.trainer import setup

    cfg = algos.build_config("grpo", sets={"eval_size": 8})
    _, tok, _, _, model = setup(cfg)
    ro, lp, cmask = _sample_and_recompute(model, tok, ["1+2=", "34+56="], 3, 5, 0)
    sampler = torch.zeros_like(cmask)
    for i, s in enumerate(ro.sampler_logp):
        sampler[i, : len(s)] = s
    assert cmask.sum() > 0
    assert ((lp - sampler).abs() * cmask).max() < 1e-4
    assert ro.truncated.dtype == torch.bool and len(ro.completions) == 6


def test_cli_train_eval_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "grpo", "--out", str(out), "--total-steps", "2", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy before RL" in printed and "held-out accuracy after RL" in printed
    names = {line.split(",")[2] for line in (out / "metrics.csv").read_text().splitlines()[1:]}
    for n in (
        "reward/mean",
        "reward/exact_match_mean",
        "groups/zero_variance_frac",
        "adv/std",
        "adv/abs_max",
        "stats/clip_frac_low",
        "stats/clip_frac_high",
        "stats/entropy",
        "completion/truncation_rate",
        "perf/gen_tokens_per_s",
        "perf/train_tokens_per_s",
        "stats/logp_mismatch",
        "eval/accuracy",
    ):
        assert n in names, n
    assert "stats/kl_ref" not in names  # no KL term, no reference: nothing to report
    assert (out / "samples.jsonl").read_text().count("\n") >= 4
    lrs = {
        int(r[0]): float(r[3])
        for r in (line.split(",") for line in (out / "metrics.csv").read_text().splitlines())
        if r[2] == "train/lr"
    }
    assert lrs == pytest.approx({1: 3e-4, 2: 1.5e-4})  # linear decay over total_steps=2 (the default schedule)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out / "model"))  # plain transformers
    assert model.config.num_hidden_layers == 2
    assert main(["eval", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= res["accuracy"] <= 1 and "pass@2" in res and res["decoding"] == "greedy"
    assert main(["eval", str(out), "--stochastic"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["decoding"] == "sampled" and 0 <= res["accuracy"] <= 1
    assert main(["train", "--resume", str(out), "--total-steps", "3", "--no-progress"]) == 0
    steps = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert max(steps) == 3 and len(set(steps) & {1, 2, 3}) == 3
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["train", "grpo", "--set", "group_size=1"], "group_size"),
        (["train", "grpo", "--dataset", "/nonexistent.jsonl", "--set", "sft_steps=0"], "dataset not found"),
        (["train", "grpo", "--set", "nope=1"], "unknown config key"),
        (["train", "grpo", "--set", "lr_schedule=cosine"], "lr_schedule"),
        (["train", "grpo", "--task", "nope"], "task"),
        (["train", "grpo", "--model", "/nonexistent", "--set", "sft_steps=0"], "model"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, msg):
    assert main([*argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert msg in err and len([x for x in err.strip().splitlines() if x.startswith("policyopt")]) == 1


def test_cli_bad_input_subprocess(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "policyopt.cli.main",
            "train",
            "grpo",
            "--set",
            "temperature=-1",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "temperature" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "preset, extra",
    [
        ("dapo", []),
        ("gdpo", []),
        ("spo", ["--set", "prompts_per_step=8"]),
        ("reinforce_pp", []),
        ("cppo", ["--set", "cppo_keep=2"]),
        ("forking_tokens", []),
        ("seed_grpo", []),
        ("bnpo", []),
        ("d3s", ["--set", "d3s_keep=2"]),
        ("asymre", []),
    ],
)
def test_presets_run_one_step(tmp_path, preset, extra):
    out = tmp_path / preset
    assert (
        main(
            [
                "train",
                preset,
                "--out",
                str(out),
                "--total-steps",
                "1",
                *FAST,
                "--set",
                "eval_k=1",
                "--set",
                "sft_steps=0",
                *extra,
            ]
        )
        == 0
    )
    assert (out / "model" / "config.json").exists()


def test_lora_and_reference_kl(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert (
        main(
            [
                "train",
                "grpo",
                "--out",
                str(out),
                "--total-steps",
                "2",
                *FAST,
                "--set",
                "sft_steps=0",
                "--set",
                "lora_r=4",
                "--set",
                "beta=0.04",
                "--set",
                "learning_rate=0.01",
                "--set",
                "ent_coef=0.5",
            ]
        )
        == 0
    )  # the entropy bonus moves the adapter even with zero rewards
    kl = [
        float(line.split(",")[3])
        for line in (out / "metrics.csv").read_text().splitlines()[1:]
        if line.split(",")[2] == "stats/kl_ref"
    ]
    assert kl and kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 0  # reference = adapter-disabled base
    m = transformers.AutoModelForCausalLM.from_pretrained(str(out / "model"))  # merged, plain transformers
    assert not any("lora" in n for n, _ in m.named_parameters())


def test_reasoning_gym_task_uses_its_own_scorer():
    pytest.importorskip("reasoning_gym")
    t = load_task("rg:basic_arithmetic", None, 0, 4)
    rs = RewardSet(t.default_rewards, t.scorer)
    rows = t.test[:2]
    fields = {"answer": [r["answer"] for r in rows], "_rg_index": [r["_rg_index"] for r in rows]}
    total, _ = rs([r["prompt"] for r in rows], [rows[0]["answer"], "garbage"], fields)
    assert total.tolist() == [1.0, 0.0]


def _lean_model(kind, device="cpu"):
    """A tiny model for the lean-path tests (on ``device``); ``gqa-untied``: Llama with 4 query heads over 2
    key/value heads and an untied LM head (the shipped tiny configs have neither)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from policyopt.lm.model import build_model, load_tokenizer

    tok = load_tokenizer("tiny-llama", None)
    if kind != "gqa-untied":
        return tok, build_model(kind, tok, 0).to(device)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return tok, AutoModelForCausalLM.from_config(cfg).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["tiny-llama", "tiny-qwen2", "gqa-untied"])
def test_fast_sampler_matches_model(kind, device):
    """The lean sampler: greedy tokens equal ``model.generate``; sampled log-probs equal the train-time
    recomputation; a completion is cut at its first EOS."""
    from policyopt.lm import fastgen

    tok, m = _lean_model(kind, device)
    m.eval()
    prompts = ["1+2=", "56+78=", "9+11="]
    assert fastgen.supported(m, 1.0, [])
    assert not fastgen.supported(m, 0.9, []) and not fastgen.supported(m, 1.0, ["\n"])
    rep = [p for p in prompts for _ in range(2)]
    enc = tok(rep, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    g1, _ = fastgen.sample(
        m,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=8,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        greedy=True,
    )
    g2 = m.generate(
        **enc, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )[:, enc["input_ids"].shape[1] :]
    assert torch.equal(g1[:, : g2.shape[1]], g2)
    ro, lp, _ = _sample_and_recompute(m, tok, prompts, 4, 12, 0)
    for i, c in enumerate(ro.completion_ids):
        assert torch.allclose(lp[i, : len(c)], ro.sampler_logp[i], atol=1e-5)
        assert tok.eos_token_id not in c[:-1]
        assert bool(ro.truncated[i]) == (len(c) == 12 and c[-1] != tok.eos_token_id)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk_steps", [1, 3])
def test_fast_sampler_in_step_chunks(monkeypatch, chunk_steps, device):
    """With logits / noise buffers bounded to a few decode steps (as for a real vocabulary), the sampled
    log-probs still equal the train-time recomputation, chunk boundaries and early stops included."""
    from policyopt.lm import fastgen

    tok, m = _lean_model("tiny-llama", device)
    prompts = ["1+2=", "56+78=", "9+11="]
    monkeypatch.setattr(fastgen, "_CHUNK_ELEMENTS", chunk_steps * len(prompts) * 4 * len(tok))
    ro, lp, _ = _sample_and_recompute(m, tok, prompts, 4, 10, 1)
    for i, c in enumerate(ro.completion_ids):
        assert len(ro.sampler_logp[i]) == len(c) and bool((ro.sampler_logp[i] < 0).all())
        assert torch.allclose(lp[i, : len(c)], ro.sampler_logp[i], atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["tiny-llama", "tiny-qwen2", "gqa-untied"])
def test_lean_train_forward_matches_the_model_in_value_and_gradient(kind, device):
    """``fastgen.completion_logits`` (used for train-time log-probs) equals the transformers forward on a
    left-padded batch with rows sharing a prompt (computed once by the padding-free layout), completions of
    unequal length (one empty): logits at every completion token and the gradient of every parameter."""
    from policyopt.lm import fastgen
    from policyopt.lm.rollout import collate

    tok, m = _lean_model(kind, device)
    assert fastgen.supported_model(m)
    prompts = ["1+2=", "56+78=", "1+2=", "9+11=", "56+78=", "1+2="]
    comps = ["3", "134", "4<", "20", "", "3333"]
    ids, attn, pos, cmask, P = collate(
        [tok.encode(p) for p in prompts], [tok.encode(c) for c in comps], tok.pad_token_id, 5
    )
    ids, attn, pos, cmask = ids.to(device), attn.to(device), pos.to(device), cmask.to(device)
    valid = cmask.bool()
    assert int(valid.sum()) == sum(len(tok.encode(c)) for c in comps)
    w = torch.randn(len(prompts), 5, len(tok), generator=torch.Generator().manual_seed(0)).to(device)
    lean = fastgen.completion_logits(m, ids, attn, pos, P)
    assert lean.shape == (int(valid.sum()), len(tok))
    (lean * w[valid]).sum().backward()
    g_lean = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    ref = m(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, P - 1 : -1].float()
    (ref * w * cmask[..., None]).sum().backward()
    torch.testing.assert_close(lean, ref[valid], atol=2e-5, rtol=1e-4)
    for n, p in m.named_parameters():
        torch.testing.assert_close(g_lean[n], p.grad, atol=2e-5, rtol=1e-3, msg=n)


def test_flat_layout_computes_a_shared_prompt_once():
    """Rows with the same (left-padded) prompt map their prompt positions to one set of flat tokens; pads are
    not flat tokens; every completion token is its own."""
    from policyopt.lm.fastgen import _flat_layout

    pad = 0
    ids = torch.tensor([[pad, 5, 6, 1, 2], [pad, 5, 6, 3, pad], [7, 8, 9, 4, 4], [pad, 5, 6, 9, 9]])
    attn = (ids != pad).long()
    src, gidx = _flat_layout(ids, attn, 3)
    # flat tokens: prompt (5, 6) once (row 0), completions of rows 0, 1, prompt + completion of row 2, row 3's
    assert ids.flatten()[src].tolist() == [5, 6, 1, 2, 3, 7, 8, 9, 4, 4, 9, 9]
    g = gidx.view(4, 5)
    assert g[1, 1:3].tolist() == g[0, 1:3].tolist() == g[3, 1:3].tolist() == [0, 1]
    assert torch.equal(ids.flatten()[src][gidx].view(4, 5)[attn.bool()], ids[attn.bool()])


def test_exponential_race_sampler_draws_from_the_softmax():
    from policyopt.sampling import race_sample

    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(40_000, 1) / 0.7
    out = torch.empty(len(logits), dtype=torch.long)
    nxt = race_sample(logits, out=out)
    assert nxt.data_ptr() == out.data_ptr()
    p = torch.softmax(logits[0], -1)
    freq = torch.bincount(nxt, minlength=4).float() / len(nxt)
    assert (freq - p).abs().max() < 0.01  # 4+ standard errors at n = 40k


def test_warm_start_ends_once_training_prompt_accuracy_reaches_target(tmp_path, monkeypatch):
    """sft_target_accuracy: checks every sft_check_every steps on training prompts; the first check at or
    above the target ends the warm-start (here a stubbed check answers 0.2, then 0.5)."""
    from policyopt.lm import trainer as lm_trainer

    answers = iter([0.2, 0.5])
    real = lm_trainer.evaluate_model

    def fake(model, tok, rows, *a, **k):
        if len(rows) == 8:  # the warm-start check (sft_check_size=8); held-out evaluations use eval_size=16
            return {"accuracy": next(answers)}
        return real(model, tok, rows, *a, **k)

    monkeypatch.setattr(lm_trainer, "evaluate_model", fake)
    out = tmp_path / "sft"
    argv = [
        "train",
        "grpo",
        "--out",
        str(out),
        "--total-steps",
        "1",
        *FAST,
        "--set",
        "sft_steps=100",
        "--set",
        "sft_check_every=10",
        "--set",
        "sft_check_size=8",
        "--set",
        "sft_target_accuracy=0.4",
    ]
    assert main(argv) == 0
    assert _metric(out, "sft/train_accuracy") == [0.2, 0.5]
    assert len(_metric(out, "loss/sft")) == 2  # logged at each check: the warm-start stopped at step 20
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows if r[2] == "sft/train_accuracy"] == [-90, -80]


def _metric(out, name) -> list[float]:
    return [
        float(line.split(",")[3])
        for line in (out / "metrics.csv").read_text().splitlines()[1:]
        if line.split(",")[2] == name
    ]


def test_cppo_prunes_the_enlarged_batch(tmp_path):
    """4 prompts x G=4 nominal, cppo_keep=3 (retain rate 3/4): floor(4 * 4 / 3) = 5 prompts are drawn (20
    completions) and the floor(20 * 3 / 4) = 15 with the largest |A| over the whole batch are trained."""
    out = tmp_path / "cppo"
    argv = ["train", "cppo", "--out", str(out), "--total-steps", "1", *FAST, "--set", "eval_k=1"]
    assert main([*argv, "--set", "sft_steps=0", "--set", "cppo_keep=3"]) == 0
    assert _metric(out, "select/rollout_batch") == [20.0]
    assert _metric(out, "select/train_batch") == [15.0]
    assert _metric(out, "select/cppo_kept_frac") == [pytest.approx(15 / 20)]


def test_d3s_token_level_and_schedule(tmp_path):
    """D3S preset: the token keep ratio is annealed 0.5 -> 1.0 over 2 steps; at step 1 about half of the
    kept rollouts' tokens carry loss (ceil), at step 2 all of them."""
    out = tmp_path / "d3s"
    argv = ["train", "d3s", "--out", str(out), "--total-steps", "2", *FAST, "--set", "eval_k=1"]
    sets = ["--set", "sft_steps=0", "--set", "d3s_keep=2", "--set", "d3s_token_ratio_start=0.5"]
    assert main([*argv, *sets]) == 0
    assert _metric(out, "select/d3s_token_ratio") == [0.5, 1.0]
    frac = _metric(out, "select/d3s_token_frac")
    assert 0.5 <= frac[0] < 0.75 and frac[1] == 1.0
    assert _metric(out, "select/train_batch") == [8.0, 8.0]  # d3s_keep=2 of G=4 for 4 prompts


def test_run_stopped_before_its_final_evaluation_resumes_to_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "grpo", "--out", str(out), "--total-steps", "2", *FAST]) == 0
    first = json.loads((out / "eval.json").read_text())
    (out / "eval.json").unlink()
    assert main(["train", "--resume", str(out)]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["step"] == first["step"] == 2 and again["accuracy_before"] == first["accuracy_before"]
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    assert "already finished" in capsys.readouterr().err
