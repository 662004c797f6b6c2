"""policyopt's grpo / dr_grpo / dapo losses equal TRL GRPOTrainer's on one fixed batch (loss and every
parameter gradient to 1e-5), on the same tiny Llama saved with ``save_pretrained``. Driver:
``benchmarks/lm/trl_compare.py``; conventions: ``benchmarks/lm/README.md``."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
try:
    import trl  # noqa: F401
except Exception as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"trl is not importable ({e!r}); install the 'bench' extra", allow_module_level=True)

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "lm" / "trl_compare.py"


@pytest.fixture(scope="module")
def tc():
    spec = importlib.util.spec_from_file_location("trl_compare", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["trl_compare"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model_dir(tc, tmp_path_factory):
    return tc.save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_loss_and_grads_equal_trl(tc, model_dir, loss_type):
    r = tc.compare(loss_type, model_dir, beta=0.04)  # policy term + k3 KL term
    assert r["grad_max_abs"] > 1e-3  # the gradient is not trivially zero
    assert r["loss_abs_diff"] < 1e-5, r
    assert r["grad_max_abs_diff"] < 1e-5, r


def test_left_padded_prompts_equal_trl(tc, model_dir):
    r = tc.compare("grpo", model_dir, equal_prompt_len=False)
    assert r["loss_abs_diff"] < 1e-5 and r["grad_max_abs_diff"] < 1e-5, r


def test_trl_default_bias_corrected_kl_differs(tc, model_dir):
    """TRL's default ``use_bias_correction_kl=True`` multiplies k3 by the ratio: a documented difference."""
    r = tc.compare("dapo", model_dir, beta=0.04, bias_correction_kl=True)
    assert r["loss_abs_diff"] > 1e-6
