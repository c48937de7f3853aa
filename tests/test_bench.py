"""Performance benchmark (twgtm/bench.py): the levers keep outputs equal, the FLOP model matches the pipeline."""
import json
import math

import pytest
import torch

from twgtm import bench
from twgtm.attention import ExtendedAttnProcessor, TWGTMAttnProcessor
from twgtm.errors import InputError
from twgtm.pipeline import TWGTMPipeline

STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops: intra-op threads only add contention on shared CI cores (5-10x slower under load)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def model():
    return bench.build_model(bench.make_config("tiny"), device="cpu", dtype=torch.float32, seed=0)


@pytest.fixture(scope="module")
def inputs(model):
    return bench.sample_inputs(model.config, batch=2, seed=3)


def _try_on(model, x, **kw):
    return TWGTMPipeline(model).try_on(x["person"], x["garment"], x["mask"], "upper", num_inference_steps=STEPS,
                                       guidance_scale=2.5, generator=7, **kw).images


# ------------------------------------------------------------------ levers keep outputs equal
def test_optimised_extended_attention_step_equals_naive(model):
    inp = bench.step_inputs(model, seed=1)
    fns = bench.step_functions(model, inp)
    with torch.no_grad():
        fast = fns["twgtm"][1]()        # K'/V' once, EA on the conditional row only
        naive = fns["twgtm_naive"][1]()  # F_SRM on both rows, K'/V' projected here, gate [0, 1]
        plain = model.predict_noise(inp["x"], inp["t"], inp["f_sam"])  # EA processors, branch off
    assert fast.shape == naive.shape == (2, 4, *inp["x"].shape[-2:])
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    # the branch is live (random ZLL): the conditional row moves, the unconditional row does not
    assert (fast[1] - plain[1]).abs().max() > 1e-3
    torch.testing.assert_close(fast[0], plain[0], atol=1e-6, rtol=0)


def test_naive_mode_pipeline_equals_optimised_pipeline(model, inputs):
    fast = _try_on(model, inputs)
    with bench.naive_mode(model):
        naive = _try_on(model, inputs)
    assert "predict_noise" not in vars(model) and "precompute_srm_kv" not in vars(model)
    assert fast.shape == (2, 3, model.config.height, model.config.width)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)


def test_offload_encoders_keeps_output(model, inputs):
    ref = _try_on(model, inputs)
    with bench.offload_encoders(model, "cpu"):
        out = _try_on(model, inputs)
    assert not model.sam._forward_pre_hooks and not model.decoder._forward_hooks
    assert torch.equal(ref, out)


def test_baseline_mode_is_plain_unet_and_restores_model(model, inputs):
    procs = dict(model.unet.attn_processors)
    n_ea = sum(isinstance(p, ExtendedAttnProcessor) for p in procs.values())
    inp = bench.step_inputs(model, seed=2)
    with torch.no_grad():
        plain = model.predict_noise(inp["x"], inp["t"], bench.baseline_context(model, 2))
        with bench.baseline_mode(model):
            assert all(type(p) is TWGTMAttnProcessor for p in model.unet.attn_processors.values())
            feats = model.encode_reference(torch.zeros(1, 3, 64, 48), torch.zeros(1, dtype=torch.long))
            assert feats.srm is None and feats.f_srm is None and not feats.sam.f_sam.any()
            base = model.predict_noise(inp["x"], inp["t"], bench.baseline_context(model, 2))
            out = _try_on(model, inputs)
    assert torch.equal(plain, base)
    assert out.shape == (2, 3, 64, 48) and torch.isfinite(out).all()
    assert "encode_reference" not in vars(model)
    after = model.unet.attn_processors
    assert all(after[n] is p for n, p in procs.items())
    assert n_ea == 10 and sum(isinstance(p, ExtendedAttnProcessor) for p in after.values()) == n_ea


# ------------------------------------------------------------------ FLOP model
def test_flop_model_matches_pipeline_count(model, inputs):
    """The per-piece FLOP model, counted on the meta device, adds up to what FlopCounterMode sees in the
    real pipeline calls on the CPU."""
    x = {k: v[:1] for k, v in inputs.items()}
    pipe = TWGTMPipeline(model)
    opts = dict(num_inference_steps=STEPS, guidance_scale=2.5, generator=0)
    parts = bench.flop_breakdown(bench.build_model(model.config, device="meta"))
    totals = bench.flop_totals(parts, STEPS)

    tryon, _ = bench.count_flops(lambda: pipe.try_on(x["person"], x["garment"], x["mask"], "upper", **opts))
    tryoff, _ = bench.count_flops(lambda: pipe.try_off(x["person"], "upper", **opts))
    with bench.baseline_mode(model):
        base, _ = bench.count_flops(lambda: pipe.try_on(x["person"], x["garment"], x["mask"], "upper", **opts))
    with bench.naive_mode(model):
        naive, _ = bench.count_flops(lambda: pipe.try_on(x["person"], x["garment"], x["mask"], "upper", **opts))
    assert tryon == totals["tryon"]
    assert tryoff == totals["tryoff"]
    assert base == totals["baseline"]
    # the naive F_SRM rows are zero padding instead of copies: same shapes, same count
    assert naive == totals["tryon_naive"]
    s = parts["per_step"]
    assert s["baseline_no_xattn"] < s["baseline"] < s["twgtm"] < s["twgtm_cond_rows_kv_every_step"]
    assert s["twgtm"] < s["twgtm_kv_once_both_halves"] < s["twgtm_naive"]


def test_count_flops_counts_cpu_sdpa():
    q = torch.zeros(2, 3, 16, 8)
    flops, _ = bench.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 4 * 2 * 3 * 16 * 16 * 8


def test_cli_flops_only_json(capsys):
    assert bench.main(["--config", "tiny", "--flops-only", "--json", "--steps", "50"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("flops_ratio_tryon_1024x768", "flops_ratio_tryoff_1024x768",
                "flops_ratio_tryon_512x384", "flops_ratio_tryoff_512x384"):
        assert math.isfinite(report[key]) and report[key] > 1.0, key
    assert report["flops_ratio_tryon_naive_1024x768"] > report["flops_ratio_tryon_1024x768"]
    assert report["timing"] is None
    rec = report["flops"]["sizes"]["1024x768"]
    assert rec["total"]["baseline"] == 2 * rec["one_off"]["vae_encode"] + rec["one_off"]["vae_decode"] \
        + 50 * rec["per_step"]["baseline"]
    for name in ("baseline", "twgtm"):
        kinds = rec["per_step_by_kind"][name]
        assert sum(kinds.values()) == rec["per_step"][name] and kinds["attention"] > 0 and kinds["other"] == 0


def test_cli_timing_on_cpu(capsys):
    argv = ["--config", "tiny", "--sizes", "64x48", "--steps", "1", "--repeats", "1", "--warmup", "0",
            "--step-iters", "1", "--device", "cpu", "--naive"]
    assert bench.main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cases = report["timing"]["cases"]
    assert set(cases) == {"baseline", "tryon", "tryoff", "tryon_naive"}
    assert cases["baseline"]["ratio_to_baseline"] == 1.0 and report["time_ratio_baseline"] == 1.0
    for rec in cases.values():
        assert rec["median_s"] > 0 and rec["peak_gib"] is None and rec["rss_max_growth_mib"] >= 0
    assert set(report["timing"]["step"]) == {"baseline", "twgtm", "twgtm_naive"}
    assert report["timing"]["threads"] == 1 and report["timing"]["phases_gib"] is None
    text = bench.to_markdown(report)
    for row in ("| 64x48 | TWGTM try-on |", "| baseline |", "| tryon |", "| tryoff |", "| tryon_naive |", "| twgtm |"):
        assert row in text, row


@pytest.mark.parametrize("text", ["1024", "1024x", "0x768", "1000x770", "axb"])
def test_parse_size_rejects(text):
    with pytest.raises(InputError, match="sizes"):
        bench.parse_size(text)


def test_phase_memory_runs_every_phase(model):
    out = bench.phase_memory(model)
    assert set(out) == {"weights_allocated", "vae_encode_one", "vae_encode_two_together", "encode_reference",
                        "unet_step_baseline", "unet_step_twgtm", "unet_step_naive", "vae_decode_one"}
    assert all(v is None for v in out.values())  # no CUDA here


def test_weights_split(model):
    w = bench.weights_gib(model)
    parts = ("unet", "extended_attention", "vae", "clip_vision", "qformer_prompts", "srm", "decoder")
    assert w["total"] == pytest.approx(sum(w[p] for p in parts))
    assert w["extended_attention"] > 0 and w["baseline"] == pytest.approx(w["unet"] + w["vae"])
