"""The training loop against a plain PyTorch loop written out here, MFU in the logs, and --compile auto."""

import json
import math

import pytest
import torch

import lmforge
from lmforge.data.batches import PreparedData
from lmforge.data.prepare import prepare_corpus
from lmforge.model.flops import flops_per_token
from lmforge.tokenizer import train_tokenizer
from lmforge.train.logs import read_metrics
from lmforge.train.objectives import make_objective
from lmforge.train.options import TrainConfig
from lmforge.train.runs import build_config
from lmforge.train.speed import MIN_PAYBACK, PROBE_STEPS, WARMUP_STEPS, CompileProbe, peak_flops
from lmforge.train.trainer import Trainer
from lmforge.errors import ConfigError

TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: You are all "
        "resolved rather to die than to famish? All: Resolved. resolved. ") * 40
STEPS, LR, MIN_LR, WARMUP = 25, 3e-3, 3e-4, 5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean")
    (root / "corpus.txt").write_text(TEXT)
    tok = train_tokenizer([TEXT], "char", None, "decoder", progress=False)
    prepare_corpus([str(root / "corpus.txt")], tok, root / "data", val_fraction=0.1, progress=False)
    return root / "data"


def _setup(data, out, **kw):
    prepared = PreparedData(data)
    tok = prepared.tokenizer()
    train = TrainConfig(**{**dict(max_steps=STEPS, batch_size=4, context=32, lr=LR, min_lr=MIN_LR, warmup_steps=WARMUP,
                                  eval_every=0, eval_batches=2, save_every=0, log_every=1, threads=1, progress=False,
                                  dtype="fp32", weight_decay=0.1, beta2=0.99, grad_clip=1.0, peak_tflops=0.05,
                                  compile="off"), **kw})
    config = build_config("gpt-nano", {"n_layer": 2, "d_model": 32, "n_head": 2, "dropout": 0.0}, tok, 32, "clm")
    torch.manual_seed(0)
    net = lmforge.build_model(config)
    objective = make_objective("clm", prepared, tok, 32, train.seed)
    return Trainer(net, objective, train, out, tok), objective, config


def _plain_loop(config, objective) -> list[float]:
    """nanoGPT's loop, written out: the same initial weights, batches and recipe, none of the Trainer's code."""
    torch.manual_seed(0)
    model = lmforge.build_model(config).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "pos_embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.99), foreach=False)
    out = []
    for step in range(STEPS):
        if step < WARMUP:
            lr = LR * (step + 1) / (WARMUP + 1)
        else:
            progress = (step - WARMUP) / (STEPS - WARMUP)
            lr = MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = objective.batch(step * 4, 4)
        logits = model(batch["input_ids"])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=False)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def test_the_loop_logs_the_losses_of_a_plain_pytorch_loop(data, tmp_path):
    trainer, objective, config = _setup(data, tmp_path / "run")
    summary = trainer.fit()
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    reference = _plain_loop(config, objective)
    assert reference[-1] < reference[0] - 0.5  # (it learns: the comparison is not between two flat lines)
    for row, ref in zip(rows, reference):
        assert abs(row["loss"] - ref) <= 1e-6 * max(1.0, abs(ref)), (row["step"], row["loss"], ref)
    # MFU: the model's FLOPs per token (lmforge info's count) x tokens/s over the given peak
    flops = flops_per_token(trainer.model, 32)["train"]
    from lmforge.commands.info import analyse

    assert flops == analyse(config, 32)["flops_train_per_token"]  # the count `lmforge info` prints
    assert summary["flops_per_token"] == int(flops) and summary["peak_tflops"] == 0.05
    assert summary["mfu"] == pytest.approx(flops * summary["tok_per_s"] / 0.05e12, rel=1e-3, abs=1e-4)
    assert all(r["mfu"] == pytest.approx(flops * r["tok_per_s"] / 0.05e12, rel=1e-2, abs=1e-4) for r in rows)
    assert summary["compile"] == "off"
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith(",mfu")


def test_compile_auto_stays_eager_on_a_short_run_and_keeps_its_decision(data, tmp_path):
    steps = WARMUP_STEPS + PROBE_STEPS + 5
    trainer, _, _ = _setup(data, tmp_path / "run", compile="auto", max_steps=steps, save_every=steps)
    summary = trainer.fit()
    assert summary["compile"]["auto"] == "off" and "too short" in summary["compile"]["why"]
    assert summary["compile"]["eager_ms"] > 0
    state = json.loads((tmp_path / "run" / "last" / "state" / "trainer_state.json").read_text())
    assert state["state"]["compiled"] == "off"
    # every block is still the eager module
    assert all(block._compiled_call_impl is None for block in trainer.model.decoder.layers)


def test_compile_probe_decides_by_measured_times():
    cpu = torch.device("cpu")
    # a long run: compiles after the eager probe, keeps compiling when compiled steps are faster
    probe = CompileProbe(cpu, remaining_steps=1_000_000)
    for _ in range(WARMUP_STEPS + PROBE_STEPS):
        probe.observe(0.050)
    assert probe.wants_compile and probe.decision is None
    probe.wants_compile = False
    probe.observe(20.0), probe.observe(5.0)  # compiling
    for _ in range(PROBE_STEPS):
        probe.observe(0.030)
    assert probe.decision == "on" and probe.report["speedup"] == pytest.approx(50 / 30, rel=1e-3)
    assert probe.report["compile_s"] == 25.0
    # ... and goes back to eager when they are not
    probe = CompileProbe(cpu, remaining_steps=1_000_000)
    for _ in range(WARMUP_STEPS + PROBE_STEPS):
        probe.observe(0.050)
    for _ in range(2 + PROBE_STEPS):
        probe.observe(0.051)
    assert probe.decision == "off" and "as fast" in probe.report["why"]
    # a run whose remaining eager time is under MIN_PAYBACK x the compile guess never compiles
    short = int(MIN_PAYBACK * 60 / 0.050) - 1 + WARMUP_STEPS + PROBE_STEPS
    probe = CompileProbe(cpu, remaining_steps=short)
    for _ in range(WARMUP_STEPS + PROBE_STEPS):
        probe.observe(0.050)
    assert probe.decision == "off" and not probe.wants_compile
    # a time-boxed run (--max-time) counts the time it has left, however many steps it could take
    probe = CompileProbe(cpu, remaining_steps=1_000_000, time_left=MIN_PAYBACK * 60 - 1)
    for _ in range(WARMUP_STEPS + PROBE_STEPS):
        probe.observe(0.050)
    assert probe.decision == "off" and not probe.wants_compile
    assert probe.report["remaining_eager_s"] < MIN_PAYBACK * 60
    probe = CompileProbe(cpu, remaining_steps=1_000_000, time_left=MIN_PAYBACK * 60 * 3)
    for _ in range(WARMUP_STEPS + PROBE_STEPS):
        probe.observe(0.050)
    assert probe.wants_compile


def test_peak_flops_is_measured_once_and_cached(tmp_path, monkeypatch):
    import lmforge.train.speed as speed

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu = torch.device("cpu")
    real, calls, alone = speed.measure_peak_flops, [], [False]

    def measured(device, dtype):  # the real measurement; whether it had the CPU to itself is set by the test
        calls.append(dtype)
        return real(device, dtype)[0], alone[0]

    monkeypatch.setattr(speed, "measure_peak_flops", measured)
    rng = torch.get_rng_state()
    busy = peak_flops(cpu, torch.float32)
    assert torch.equal(torch.get_rng_state(), rng)  # (measuring draws nothing from the run's random stream)
    assert busy > 1e9 and not (tmp_path / "lmforge" / "peak_flops.json").exists()  # measured among other jobs: kept
    alone[0] = True                                                                   # for this run only
    first = peak_flops(cpu, torch.float32)
    cached = json.loads((tmp_path / "lmforge" / "peak_flops.json").read_text())
    assert list(cached.values()) == [first] and "float32" in next(iter(cached))
    assert peak_flops(cpu, torch.float32) == first and len(calls) == 2  # read back, not measured again
    assert peak_flops(cpu, torch.float32, given_tflops=2.5) == 2.5e12 and len(calls) == 2
    flops, _ = real(cpu, torch.float32, repeats=1)  # the real function's own answer has both parts
    assert flops > 1e9


def test_compile_and_peak_options_are_checked():
    assert TrainConfig(compile=True).compile == "on" and TrainConfig(compile=False).compile == "off"  # old run.json
    with pytest.raises(ConfigError, match="--compile"):
        TrainConfig(compile="sometimes")
    with pytest.raises(ConfigError, match="--peak-tflops"):
        TrainConfig(peak_tflops=0)


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_the_compiled_step_has_no_graph_break_and_trains_like_eager(data, tmp_path, monkeypatch, scope):
    """As litgpt guards its compiled step: the training forward (model and loss, what --compile on compiles) and
    the block (what a sharded run compiles) each trace to one graph (fullgraph=True raises on a break), and a
    compiled run logs the eager run's losses within float rounding."""
    import lmforge.train.trainer as trainer_module

    trainer, objective, config = _setup(data, tmp_path / "eager", max_steps=8)
    eager = trainer.fit()
    torch._dynamo.reset()
    monkeypatch.setattr(trainer_module, "COMPILE_SCOPE", scope)
    compiled, _, _ = _setup(data, tmp_path / "compiled", max_steps=8, compile="on")
    if scope == "model":
        assert compiled.objective_module._compiled_call_impl is not None
        compiled.objective_module.compile(fullgraph=True)
    else:
        assert compiled.objective_module._compiled_call_impl is None
        for block in compiled.model.decoder.layers:
            assert block._compiled_call_impl is not None
            block.compile(fullgraph=True)
    summary = compiled.fit()
    assert summary["compile"] == "on"
    a = [r["loss"] for r in read_metrics(tmp_path / "eager" / "metrics.jsonl") if r["split"] == "train"]
    b = [r["loss"] for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl") if r["split"] == "train"]
    assert len(a) == len(b) == 8 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    assert abs(eager["val_loss"] - summary["val_loss"]) < 1e-4


@pytest.mark.parametrize("preset", ["gpt-nano", "llama-nano"])
def test_the_training_forward_traces_to_one_graph(data, preset):
    """The guard of the compiled step that runs in the default suite: the causal-LM training forward (model and loss,
    what --compile on compiles) of a GPT and a Llama block traces without a graph break and its backward through
    AOTAutograd (backend aot_eager: the tracing without inductor's code generation) gives eager's gradients, with
    lmforge's CPU attention kernel in the graph where it is built (a custom operator: opaque to the compiler)."""
    from lmforge.model import kernels
    from lmforge.train.trainer import ObjectiveModule

    kernels.load_for_training(torch.device("cpu"))

    prepared = PreparedData(data)
    tok = prepared.tokenizer()
    config = build_config(preset, {"n_layer": 2, "d_model": 32, "n_head": 2, "dropout": 0.0}, tok, 32, "clm")
    torch.manual_seed(0)
    module = ObjectiveModule(lmforge.build_model(config).train(), make_objective("clm", prepared, tok, 32, 1))
    batch = module.objective.batch(0, 4)
    torch._dynamo.reset()
    traced = torch.compile(module, backend="aot_eager", fullgraph=True)
    grads = []
    for fn in (module, traced):
        module.zero_grad(set_to_none=True)
        loss, count = fn(batch)
        (loss / count).backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
