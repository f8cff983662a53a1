"""Training and evaluation glue; ``train_net.py`` and the tools are thin wrappers around it.

* ``config_checks``: ``setup_cfg`` and the start-up checks (each done once);
* ``trainer``: ``Trainer``, ``evaluate``, ``load_model_for_eval``;
* ``step_guard``: the check of every step before the optimizer step;
* ``hooks``: per-step reseeding, the raw loss log, the skipped-sample report;
* ``nan_injection``: test-only fault injection.
"""

from ..errors import ConfigError, NonFiniteLossError, one_line, report_error
from ..predictor import visualize_predictions
from .config_checks import (
    adapt_cfg_to_cpu,
    check_device,
    check_output_dir_writable,
    check_weights,
    check_weights_file,
    norm_keys_set_to,
    setup_cfg,
    validate_cfg,
)
from .hooks import LossLogHook, SkippedSamplesHook, StepSeedHook
from .nan_injection import NAN_INJECTION_ENV
from .step_guard import GuardedAMPTrainer, GuardedSimpleTrainer
from .trainer import Trainer, evaluate, load_model_for_eval, save_eval_results

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "one_line",
    "report_error",
    "setup_cfg",
    "validate_cfg",
    "adapt_cfg_to_cpu",
    "check_device",
    "check_output_dir_writable",
    "check_weights",
    "check_weights_file",
    "norm_keys_set_to",
    "Trainer",
    "GuardedSimpleTrainer",
    "GuardedAMPTrainer",
    "StepSeedHook",
    "LossLogHook",
    "SkippedSamplesHook",
    "NAN_INJECTION_ENV",
    "evaluate",
    "save_eval_results",
    "visualize_predictions",
    "load_model_for_eval",
]
