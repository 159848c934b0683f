"""dtype=auto and compile=auto (trainer/precision.py): the rule on mocked CUDA devices, explicit
values always winning, bad values as one error line, a CPU run with the defaults being the old
float32 eager run bit for bit (start-up line and summary.json included), the resolved compile
(never the config's string) reaching torch.compile, and scripts/compare_nanogpt.py giving both
trainings the same dtype and compile."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import train
from configs import load_config, to_object
from configs.errors import UserError
from runs import tiny_args
from trainer.precision import resolve_precision

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a CUDA device is here, with native bf16 or without."""
    def pretend(bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return pretend


@pytest.mark.parametrize("device,bf16,dtype,compile,why", [
    ("cuda", True, "bfloat16", True, "dtype=auto -> bfloat16 (CUDA with bf16), compile=auto -> true (CUDA)"),
    ("cuda:1", True, "bfloat16", True, "CUDA with bf16"),
    ("cuda", False, "float16", True, "dtype=auto -> float16 (CUDA without bf16)"),
    ("cpu", True, "float32", False, "dtype=auto -> float32 (CPU), compile=auto -> false"),
])
def test_auto_follows_the_device(gpu, device, bf16, dtype, compile, why):
    gpu(bf16)
    p = resolve_precision(device, "auto", "auto")
    assert (p.dtype, p.compile) == (dtype, compile) and why in p.line()


def test_the_defaults_are_auto():
    cfg = to_object(load_config([]))
    assert (cfg.dtype, cfg.compile) == ("auto", "auto")


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("bf16", [True, False])
def test_explicit_values_always_win(gpu, device, bf16):
    gpu(bf16)
    for dtype in ("float32", "bfloat16") + (("float16",) if device == "cuda" else ()):
        for compile, on in (("true", True), ("false", False)):
            p = resolve_precision(device, dtype, compile)
            assert (p.dtype, p.compile) == (dtype, on)
            assert f"dtype={dtype} (set), compile={compile} (set)" in p.line()
    with pytest.raises(UserError, match="float16 needs CUDA"):
        resolve_precision("cpu", "float16", "auto")


@pytest.mark.parametrize("given,want", [("true", "true"), ("True", "true"), ("false", "false"),
                                        ("False", "false"), ("auto", "auto")])
def test_compile_spellings_are_one(given, want):
    """The command line's compile=true reaches the str field as "True": one spelling, so the
    string "false" (truthy) never stands for off."""
    assert to_object(load_config([f"compile={given}"])).compile == want


@pytest.mark.parametrize("override,needle", [("compile=maybe", "compile='maybe' is not one of"),
                                             ("compile=1", "compile='1'"),
                                             ("dtype=fp8", "dtype='fp8' is not one of")])
def test_bad_values_are_one_error_line(tmp_path, small_text, capsys, override, needle):
    out = tmp_path / "run"
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={out}", override)) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not out.exists()


def metrics(out: Path) -> list[dict]:
    """metrics.jsonl without its clock readings."""
    clock = {"time_s", "tokens_per_s", "ms_per_step", "mfu"}
    return [{k: v for k, v in json.loads(l).items() if k not in clock}
            for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_cpu_defaults_are_the_old_float32_eager_run(tmp_path, small_text, capsys):
    args = ["train.max_iters=10", "train.eval_interval=5", "train.log_interval=1"]
    auto, old = tmp_path / "auto", tmp_path / "old"
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={auto}", *args)) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("precision:")]
    assert lines == ["precision: dtype=auto -> float32 (CPU), compile=auto -> false (not CUDA)"]
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={old}", *args,
                                "dtype=float32", "compile=false")) == 0
    assert metrics(auto) == metrics(old) and len(metrics(auto)) == 13   # 10 steps, 3 evaluations
    summaries = [json.loads((o / "summary.json").read_text()) for o in (auto, old)]
    for s in summaries:
        assert (s["dtype"], s["compile"]) == ("float32", False)
    assert summaries[0]["final_val_loss_full"] == summaries[1]["final_val_loss_full"]


@pytest.mark.parametrize("given,compiled", [("True", True), ("false", False), ("auto", False)])
def test_the_resolved_compile_reaches_torch_compile(tmp_path, small_text, monkeypatch, given,
                                                    compiled):
    import yaml
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **k: calls.append(model) or model)
    out = tmp_path / "run"
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={out}", "train.max_iters=1",
                                "train.eval_interval=1", f"compile={given}")) == 0
    assert len(calls) == int(compiled)
    assert json.loads((out / "summary.json").read_text())["compile"] is compiled
    # config.yaml keeps the request, in its one spelling
    assert yaml.safe_load((out / "config.yaml").read_text())["compile"] == given.lower()


# ---- scripts/compare_nanogpt.py ---------------------------------------------------------------

def compare_script():
    spec = importlib.util.spec_from_file_location("compare_nanogpt",
                                                  REPO / "scripts" / "compare_nanogpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sides(cmp, device: str, dtype: str, compile: str) -> tuple[dict, dict]:
    """The dtype and compile each command line carries."""
    p = cmp.both_sides_precision(device, dtype, compile)
    nano = cmp.nanogpt_command(Path("/fake/out"), 1, 0.95, device, p)
    ours = cmp.our_command(Path("/fake/text"), Path("/fake/ours"), 1, 0.95, device, p)
    nano_args = dict(a[2:].split("=", 1) for a in nano if a.startswith("--") and "=" in a)
    our_args = dict(a.split("=", 1) for a in ours if "=" in a)
    return ({"dtype": nano_args["dtype"], "compile": nano_args["compile"]},
            {"dtype": our_args["dtype"], "compile": our_args["compile"]})


@pytest.mark.parametrize("device,bf16,dtype,compile,want", [
    ("cuda", True, "auto", "auto", ("bfloat16", "true")),
    ("cuda", False, "auto", "auto", ("float16", "true")),
    ("cuda", True, "float32", "false", ("float32", "false")),
    ("cpu", True, "auto", "auto", ("float32", "false")),
    ("cpu", True, "auto", "true", ("float32", "true")),
])
def test_compare_nanogpt_gives_both_sides_the_same_precision(gpu, device, bf16, dtype, compile,
                                                             want):
    gpu(bf16)
    nano, ours = sides(compare_script(), device, dtype, compile)
    assert (ours["dtype"], ours["compile"]) == want
    # nanoGPT's configurator reads Python literals: True / False
    assert nano == {"dtype": want[0], "compile": want[1].capitalize()}


def test_compare_nanogpt_refuses_a_cpu_dtype_nanogpt_would_not_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        compare_script().both_sides_precision("cpu", "bfloat16", "auto")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --dtype bfloat16: nanoGPT runs float32")
