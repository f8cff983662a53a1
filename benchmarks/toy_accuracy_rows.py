"""What ``benchmarks/toy_accuracy.py`` trains and compares: its rows (models), data settings,
comparisons, metrics and schedules."""

# key -> (label, config, kind)
ROWS = {
    "semantic_fpn": ("Semantic FPN (D2)", "configs/Toy/semantic_fpn_R_18_toy.yaml", "semantic"),
    "deeplabv3plus": (
        "DeepLabV3+ (D2 projects.deeplab)",
        "configs/Toy/deeplabv3plus_R_18_toy.yaml",
        "semantic",
    ),
    "rsp": ("RSP", "configs/Toy/rsp_R_18_toy.yaml", "semantic"),
    "nrd": ("NRD", "configs/Toy/nrd_R_18_toy.yaml", "semantic"),
    "nrd_bn": ("NRD, BN head", "configs/Toy/nrd_R_18_toy.yaml", "semantic"),
    "panoptic_fpn": ("Panoptic FPN (D2)", "configs/Toy/panoptic_fpn_R_18_toy.yaml", "panoptic"),
    "rsp_panoptic_fpn": (
        "RSP Panoptic FPN",
        "configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml",
        "panoptic",
    ),
    "nrd_rsp_panoptic_fpn": (
        "NRD+RSP Panoptic FPN",
        "configs/Toy/nrd_rsp_panoptic_fpn_R_18_toy.yaml",
        "panoptic",
    ),
}
SEMANTIC_ROWS = [k for k, (_, _, kind) in ROWS.items() if kind == "semantic"]
# Options of a row on top of its config: the toy NRD head uses GroupNorm and the toy DeepLabV3+
# head BatchNorm, so "NRD - DeepLabV3+" also compares norms; "nrd_bn" is NRD with DeepLabV3+'s
# norm. (A GN DeepLabV3+ is not possible: GroupNorm(32) does not divide its 48 projection
# channels.)
ROW_OPTS = {"nrd_bn": ["MODEL.NRD.NORM", "BN"]}

# setting -> (description, rows, config overrides)
SETTINGS = {
    "default": ("toy data of the toy configs: 128x160, poles 1-3 px", list(ROWS), []),
    "highres": (
        "256x512, every thin structure 1 px, road painted like wall (context-defined); "
        "trained on 128x256 crops, tested on whole images",
        SEMANTIC_ROWS,
        [
            "DATASETS.TOY.IMAGE_SIZE", "(256, 512)",
            "DATASETS.TOY.MAX_POLE_WIDTH", "1",
            "DATASETS.TOY.CONTEXT_STUFF", "True",
            "INPUT.RESIZE_BASE_SIZE", "(256, 512)",
            "INPUT.CROP.SIZE", "(128, 256)",  # DeepLabV3+'s ASPP pool (4x8) divides 256x512's res5
            "INPUT.MIN_SIZE_TEST", "256",
            "INPUT.MAX_SIZE_TEST", "512",
        ],
    ),
}  # fmt: skip

# (a, b): "a - b" is reported, in both settings where both rows run.
COMPARISONS = [
    ("rsp", "semantic_fpn"),
    ("nrd", "semantic_fpn"),
    ("nrd", "deeplabv3plus"),
    ("nrd_bn", "deeplabv3plus"),  # like with like: BN heads
    ("rsp", "deeplabv3plus"),
    ("rsp_panoptic_fpn", "panoptic_fpn"),
    ("nrd_rsp_panoptic_fpn", "panoptic_fpn"),
    ("nrd_rsp_panoptic_fpn", "rsp_panoptic_fpn"),
]
METRICS = {
    "semantic": ["mIoU", "IoU-pole", "BF"],
    "panoptic": ["PQ", "PQ_th", "PQ_st", "mIoU", "IoU-pole", "BF"],
}
METRIC_LABELS = {"IoU-pole": "thin IoU", "BF": "boundary F", "PQ_th": "PQ th", "PQ_st": "PQ st"}

# Short: the toy configs' own schedule (CPU). Full: 10x the iterations on 4x the data (GPU).
MODES = {
    "short": [],
    "full": [
        "SOLVER.MAX_ITER", "3000", "SOLVER.WARMUP_ITERS", "200",
        "DATASETS.TOY.NUM_TRAIN", "800", "DATASETS.TOY.NUM_VAL", "100",
    ],
}  # fmt: skip
