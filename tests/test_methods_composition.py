"""The penalty and constraint methods (L2 Init, Parseval, C-CHAIN, weight clipping,
normalize-and-project) together with continual backprop, ReDo, shrink and perturb and L2, in
the supervised trainer (single runs equal batched runs; resumed runs equal whole ones) and in
SB3 PPO (a resumed run equals the whole one)."""

from __future__ import annotations

import pytest
from test_batched import (
    assert_batched_resume_is_exact,
    assert_same_runs,
    config,
    regression_config,
)
from test_train_rl import CBP_RUN, assert_same_training_state, final_state, main, scalars

NEW_METHODS = {
    "l2_init": {"coefficient": 1e-2},
    "parseval": {"coefficient": 1e-2, "scale": 1.0},
    # a small target: the adaptive coefficient of plain SGD stays below where it would diverge
    "c_chain": {
        "coefficient": 1.0,
        "target_relative_loss_scale": 1e-4,
        "adapt_from_losses": 3,
        "loss_window": 4,
    },
    "weight_clipping": {"kappa": 1.0},
    "normalize_and_project": {},
}
COMPANIONS = {
    "continual_backprop": {"replacement_rate": 0.05, "maturity_threshold": 5},
    "shrink_and_perturb": {"shrink": 1e-3, "noise_std": 1e-2},
}
SHORT_REGRESSION = {"total_examples": 200, "bin_size": 100, "flip_every_examples": 50}


@pytest.mark.parametrize("name", NEW_METHODS)
def test_regression_with_cbp_snp_and_l2_batched_equals_single_runs(name, tmp_path):
    cfg = regression_config(
        method={name: NEW_METHODS[name], **COMPANIONS},
        optimizer={"name": "sgd", "lr": 0.01, "weight_decay": 1e-3},
        stream={"kwargs": SHORT_REGRESSION},
    )
    states = assert_same_runs(cfg, tmp_path)
    assert all(name in state["methods"] for state in states)


def test_all_together_with_redo_resume_exactly_in_batched_runs(tmp_path, mnist_dir):
    methods = {**NEW_METHODS, "redo": {"period": 5, "tau": 0.5}}
    cfg = config(
        "permuted-mnist",
        "bp",
        data_dir=str(mnist_dir),
        method=methods,
        network={"hidden_sizes": [16]},
        train={"batch_size": 16},
        optimizer={"name": "adam", "lr": 1e-3},
        stream={"kwargs": {"num_tasks": 2}},
    )
    assert_batched_resume_is_exact(cfg, tmp_path)


def test_ppo_with_all_of_them_and_cbp_redo_snp_resumes_exactly(tmp_path):
    sets = [f"method.{name}={value}" for name, value in {
        **NEW_METHODS, "c_chain": {"networks": ["pi"], "adapt_from_losses": 2, "loss_window": 2},
        "redo": {"period": 4, "tau": 0.1},
        "shrink_and_perturb": {"shrink": 1e-6, "noise_std": 1e-6}}.items()]  # fmt: skip
    run = [*CBP_RUN, *[arg for item in sets for arg in ("--set", item)], "--logdir", str(tmp_path)]
    assert main([*run, "--name", "whole"]) == 0
    assert main([*run, "--name", "cut", "--total-steps", "768"]) == 0
    assert main(["--resume", str(tmp_path / "cut"), "--total-steps", "1536", "--no-progress"]) == 0
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert_same_training_state(whole, resumed)
    for name in NEW_METHODS:
        assert name in whole["methods"]
    assert whole["methods"]["c_chain"]["losses_seen"] == 6  # one policy loss per rollout
    tags = scalars(tmp_path / "whole")
    assert {"plasticity/l2_init/penalty", "plasticity/parseval/penalty",
            "plasticity/c_chain/penalty"} <= set(tags)  # fmt: skip
    assert tags["plasticity/c_chain/penalty"][-1][1] > 0


def test_sam_with_cbp_redo_snp_l2_and_the_penalties_batched_equals_single_runs(tmp_path):
    # SAM's second pass (not recorded by CBP or ReDo) with every companion and the penalties
    methods = {**COMPANIONS, "redo": {"period": 5, "tau": 0.5}, "l2_init": {"coefficient": 1e-2},
               "parseval": {"coefficient": 1e-2, "scale": 1.0}}  # fmt: skip
    cfg = regression_config(
        method=methods,
        optimizer={"name": "sam", "base": "sgd", "lr": 0.01, "weight_decay": 1e-3, "rho": 0.5},
        stream={"kwargs": SHORT_REGRESSION},
    )
    states = assert_same_runs(cfg, tmp_path)
    assert all(set(methods) <= set(state["methods"]) for state in states)
