"""GPU tests (issue 19), marked ``cuda``: skipped in the CPU suite, run by ``pytest -m cuda`` on
a machine with CUDA (``make test`` and ``benchmarks/gpu_check.sh`` do so there).

CPU-vs-CUDA float32 parity of RSE, RSP and the NRD head with TF32 off; AMP training (bfloat16,
float16 with its GradScaler) and its resume on CUDA; the per-sample RNG block restoring the CUDA
generator; page-locked training batches."""

import os

import pytest
import torch
from run_helpers import ROOT, SEMANTIC_CFG, SMALL_SEMANTIC_OPTS, read_losses

pytestmark = pytest.mark.cuda


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _close(a, b, rtol=1e-4):
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    assert ((a - b).norm() / b.norm().clamp_min(1e-30)).item() < rtol


def test_rse_rsp_and_nrd_agree_between_cpu_and_cuda_in_float32(no_tf32):
    from nrd_rsp.engine import Trainer, setup_cfg
    from nrd_rsp.modeling import RSE, RSP

    torch.manual_seed(0)
    fine, coarse = torch.randn(2, 64, 33, 42), torch.randn(2, 64, 17, 21)
    for module in (RSE(64, 64, 64, 4, 3), RSP(64, 64, channels=64, num_heads=4)):
        module.eval()
        _close(module.cuda()(fine.cuda(), coarse.cuda()), module.cpu()(fine, coarse))
    cfg = setup_cfg("configs/Toy/nrd_R_18_toy.yaml", ["MODEL.DEVICE", "cpu"], quiet=True)
    model = Trainer.build_model(cfg).eval()
    feats = {k: torch.randn(2, s.channels, 128 // s.stride, 160 // s.stride) for k, s in
             model.backbone.output_shape().items()}  # fmt: skip
    head = model.sem_seg_head
    ref = head.layers(feats)
    _close(head.cuda().layers({k: v.cuda() for k, v in feats.items()}), ref)


def _trainer(out, precision, resume=False):
    from detectron2.utils.env import seed_all_rng

    from nrd_rsp.engine import Trainer, setup_cfg

    cfg = setup_cfg(
        os.path.join(ROOT, SEMANTIC_CFG),
        [
            *SMALL_SEMANTIC_OPTS,
            *("OUTPUT_DIR", str(out), "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0"),
            *("SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "MODEL.DEVICE", "cuda"),
            *("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", precision),
            *("DETERMINISTIC_ALGORITHMS", "True"),
        ],
    )
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_amp_training_and_resume_on_cuda(tmp_path, precision):
    ref = _trainer(tmp_path / "ref", precision)
    assert ref._trainer.grad_scaler.is_enabled() == (precision == "float16")
    ref.train()
    run = tmp_path / "run"
    run.mkdir()
    for f in ("model_0000001.pth", "last_checkpoint"):
        (run / f).write_bytes((tmp_path / "ref" / f).read_bytes())
    (run / "last_checkpoint").write_text("model_0000001.pth")
    resumed = _trainer(run, precision, resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    want, got = read_losses(tmp_path / "ref"), read_losses(run)
    for it in (2, 3):
        for k, v in got[it][0].items():
            # Deterministic mode; bilinear upsampling's backward stays nondeterministic on CUDA.
            assert v == pytest.approx(want[it][0][k], rel=1e-3, abs=1e-4), (it, k)


def test_seeded_rng_restores_the_cuda_generator():
    from nrd_rsp.data.resumable_sampling import seeded_rng

    torch.cuda.init()
    torch.cuda.manual_seed(7)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed(7)
    with seeded_rng(123):
        torch.rand(4, device="cuda")
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_training_batches_are_page_locked():
    from nrd_rsp.data.mappers import CheckedDatasetMapper
    from nrd_rsp.data.resumable_loader import build_resumable_train_loader
    from nrd_rsp.engine import setup_cfg

    cfg = setup_cfg(SEMANTIC_CFG, [*SMALL_SEMANTIC_OPTS, "MODEL.DEVICE", "cuda"], quiet=True)
    loader = build_resumable_train_loader(cfg, CheckedDatasetMapper(cfg, True), seed=1)
    batch = next(iter(loader))
    assert all(x["image"].is_pinned() for x in batch)
