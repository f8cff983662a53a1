"""Every measured number that README.md, MODEL_ZOO.md and docs/*.md quote comes from a committed
result file of a script in benchmarks/ (or from a formula the test evaluates).

Two checks per document:

* each quote (a phrase formatted here from the result JSON) appears in it, whitespace aside;
* each number left in it once the quotes, code, links and the tables that other tests check are
  taken out is listed in ``NOT_MEASURED`` with what it is (a paper's claim, a config value).
  A hand-typed measurement therefore fails until it becomes a quote of a result file.

The README's and MODEL_ZOO.md's config tables are checked against config_costs.json by
``tests/test_config_costs.py``; docs/NRD.md's recipe table against the configs by
``tests/test_nrd_recipe.py``.
"""

import importlib.util
import json
import os
import re
import sys

import pytest
from conftest import ROOT

RESULTS = os.path.join(ROOT, "benchmarks", "results")
NUMBER = re.compile(
    r"(?<![\w.])\d+(?:,\d{3})*\.\d+(?![\w.])"  # decimals
    r"|(?<![\w.,])\d+(?:,\d{3})*(?:\.\d+)?(?=\s?(?:%|GFLOPs|GMACs|MiB|ms\b|M\b))"  # with units
)


def _json(name):
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def _benchmark(name):
    """A script of benchmarks/ as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "benchmarks", name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _costs(config):
    return _json("config_costs.json")["configs"][config]


def _decoder_row(key):
    return {r["key"]: r for r in _json("decoders.json")["results"]}[key]


CS = "Cityscapes-SemanticSegmentation/"
COCO = "COCO-PanopticSegmentation/"


def _g(flops, digits=2):
    return f"{flops / 1e9:.{digits}f}"


def quotes_readme():
    q = _json("quickstart_eval_results.json")
    pq = q["panoptic_seg"]
    yield (
        f"reached PQ {pq['PQ']:.1f} (things {pq['PQ_th']:.1f}, stuff {pq['PQ_st']:.1f}), "
        f"mIoU {q['sem_seg']['mIoU']:.1f} and mask AP {q['segm']['AP']:.1f}"
    )
    rows = _json("panoptic_eval.json")["rows"]
    hot, base = rows["hotcoco"], rows["panopticapi_all"]
    yield (
        f"it took {hot['median_s']:.1f} s against panopticapi's {base['median_s']:.1f} s "
        f"(about {hot['speedup']:.0f}x) and used {hot['anon_increase_mib']:.0f} MiB of extra "
        f"memory against {base['anon_increase_mib']:.0f} MiB"
    )
    images = _json("panoptic_eval.json")["settings"]["images"]
    yield f"On {images:,} COCO-scale synthetic images"
    os8, dlv3p = _decoder_row("dlv3_r101_os8"), _decoder_row("dlv3p_r50_os16")
    rsp101, nrd50 = _decoder_row("rsp_r101"), _decoder_row("nrd_r50")
    yield (
        f"stride 8 is {os8['gflops_total']:.1f} GFLOPs (decoder {os8['gflops_neck_head']:.1f}), "
        f"DeepLabV3+ R-50 OS16 {dlv3p['gflops_total']:.1f} "
        f"(decoder {dlv3p['gflops_neck_head']:.1f})"
    )
    yield f"RSP R-101 costs {100 * rsp101['gflops_total'] / os8['gflops_total']:.1f}% of DeepLabV3"
    share = 100 * nrd50["gflops_neck_head"] / dlv3p["gflops_neck_head"]
    yield f"NRD's decoder costs {share:.1f}% of DeepLabV3+'s decoder"
    aux = _costs(CS + "nrd_R_50_84k_bs16.yaml")["params"]["train_only"]
    yield f"auxiliary FCN head ({aux / 1e6:.1f} M,"
    yield from _benchmark("toy_accuracy").summary_lines(_json("toy_accuracy.json"))


def quotes_model_zoo():
    toy = _json("toy_costs.json")["configs"]
    acc = _json("toy_accuracy.json")
    models, n = acc["models"]["default"], len(acc["settings"]["seeds"])
    for config, r in toy.items():
        name = os.path.basename(config)[: -len(".yaml")]
        row = _TOY_ROWS[name]
        metric = "mIoU" if "panoptic" not in name else "PQ"
        s = models[row][metric]
        yield (
            f"| {metric} {s['mean']:.1f} ± {s['std']:.1f} ({n} seeds) | "
            f"{'toy_sem_seg_val' if metric == 'mIoU' else 'toy_panoptic_val_separated'}, "
            f"benchmarks/results/toy_accuracy.md, not published | {r['gflops_total']:.2f} "
            f"| {r['params_m']:.2f} |"
        )


_TOY_ROWS = {
    "semantic_fpn_R_18_toy": "semantic_fpn",
    "deeplabv3plus_R_18_toy": "deeplabv3plus",
    "rsp_R_18_toy": "rsp",
    "nrd_R_18_toy": "nrd",
    "panoptic_fpn_R_18_toy": "panoptic_fpn",
    "rsp_panoptic_fpn_R_18_toy": "rsp_panoptic_fpn",
    "nrd_rsp_panoptic_fpn_R_18_toy": "nrd_rsp_panoptic_fpn",
}


def quotes_nrd():
    r50, stem = (
        _costs(CS + "nrd_R_50_84k_bs16.yaml"),
        _costs(CS + "nrd_R_50_deeplab_stem_84k_bs16.yaml"),
    )
    for name, stem_label, r in [
        ("nrd_R_50_84k_bs16", "ResNetV1c 32/32/64", r50),
        ("nrd_R_50_deeplab_stem_84k_bs16", "DeepLab 64/64/128", stem),
        ("nrd_R_101_84k_bs16", "ResNetV1c 32/32/64", _costs(CS + "nrd_R_101_84k_bs16.yaml")),
    ]:
        f, p = r["flops"], r["params"]
        yield (
            f"`{name}.yaml` | {stem_label} | {_g(f['total'])} | {_g(f['backbone'])} "
            f"| {_g(f['decoder'])} | {(p['total'] - p['train_only']) / 1e6:.2f} M "
            f"| {p['total'] / 1e6:.2f} M |"
        )
    extra = stem["flops"]["total"] - r50["flops"]["total"]
    yield (
        f"The DeepLab stem costs {_g(extra)} GFLOPs "
        f"(+{100 * extra / r50['flops']['backbone']:.0f}% backbone)"
    )
    f, p = r50["flops"], r50["params"]
    yield f"include {_g(f['other'])} GFLOPs of `sem_seg_postprocess`"
    yield (
        f"total {f['total']:,}; backbone {f['backbone']:,}; decoder {f['decoder']:,}; "
        f"{p['total']:,} parameters of which {p['train_only']:,} in the auxiliary head"
    )
    decoder_params = p["neck"] + p["head"] - p["train_only"]
    yield (
        f"Decoder parameters: {decoder_params / 1e6:.2f} M + {p['train_only'] / 1e6:.2f} M "
        "auxiliary head"
    )
    for config, prefix in [
        ("ADE20K-SemanticSegmentation/nrd_R_101_164k_bs16.yaml", "K = 150): "),
        ("PascalContext-SemanticSegmentation/nrd_R_101_84k_bs16.yaml", "K = 59): "),
    ]:
        r = _costs(config)
        yield (
            f"{prefix}{_g(r['flops']['total'])} GFLOPs, decoder {_g(r['flops']['decoder'])}, "
            f"{r['params']['total'] / 1e6:.2f} M parameters"
        )
    mlp = 1 * 32 * 64 * 8**2 * (18 * 16 + 16 * 16 + 16 * 19)  # formula of the dynamic MLP
    yield f"`1 x 32 x 64 x 8^2 x (18x16 + 16x16 + 16x19)` multiply-adds, {_g(mlp, 3)} GFLOPs"
    yield f"({_g(mlp, 3)} GFLOPs at 1024x2048)"
    yield f"({899 * 256 * 512 / 1e6:.0f} M floats for 1024x2048)"  # P x (H/4) x (W/4)
    dlv3p = _decoder_row("dlv3p_r50_os16")["gflops_neck_head"]
    nrd = r50["flops"]["decoder"] / 1e9
    yield (
        f"decoder **{dlv3p:.2f} GFLOPs**. NRD's decoder costs **{100 * nrd / dlv3p:.1f}%** of it "
        f"({nrd:.2f} / {dlv3p:.2f})"
    )


def quotes_rsp():
    os8 = _decoder_row("dlv3_r101_os8")
    r101, r50 = (
        _costs(CS + "rsp_R_101_FPN_90k_bs16.yaml"),
        _costs(CS + "rsp_R_50_FPN_90k_bs16.yaml"),
    )
    fpn = _costs(CS + "semantic_fpn_R_50_90k_bs16.yaml")
    yield f"ASPP 12/24/36) | {os8['gflops_total']:.2f} | {os8['params_total_m']:.2f} M |"
    share = 100 * r101["flops"]["total"] / (os8["gflops_total"] * 1e9)
    yield (
        f"| {_g(r101['flops']['total'])} ({share:.1f} %) | {r101['params']['total'] / 1e6:.2f} M |"
    )
    yield f"| {_g(r50['flops']['total'])} | {r50['params']['total'] / 1e6:.2f} M |"
    f = r101["flops"]
    yield (
        f"ResNet-101 {_g(f['backbone'])}, FPN (128 ch) {_g(fpn['flops']['neck'])}, RSP head "
        f'{_g(f["neck"] - fpn["flops"]["neck"])}, Semantic-FPN decoder ("sum") {_g(f["head"])}'
    )
    extra = (r50["params"]["total"] - fpn["params"]["total"]) / 1e6
    yield f"3 x {(r50['params']['total'] - fpn['params']['total']) // 3:,} = {extra:.2f} M"
    bmm = 2 * 3**2 * 128 * (256 * 512 + 128 * 256 + 64 * 128)  # 2 k^2 C_r per pixel of P2..P4
    yield f"per pixel of P2..P4, {_g(bmm)} GFLOPs"
    rsp, pan = (
        _costs(COCO + "rsp_panoptic_fpn_R_50_1x.yaml"),
        _costs(COCO + "panoptic_fpn_R_50_1x.yaml"),
    )
    f = rsp["flops"]
    yield (
        f"ResNet-50 {_g(f['backbone'])}, FPN {_g(pan['flops']['neck'])}, RSP head "
        f"{_g(f['neck'] - pan['flops']['neck'])}, semantic head + RPN + ROI heads {_g(f['head'])}"
    )
    yield (
        f"{rsp['params']['total'] / 1e6:.2f} M parameters (Panoptic FPN: "
        f"{pan['params']['total'] / 1e6:.2f} M)"
    )
    yield f"is {9 * 256**2 * 256 * 512 / 1e9:.0f} GFLOPs"


QUOTES = {
    "README.md": quotes_readme,
    "MODEL_ZOO.md": quotes_model_zoo,
    "docs/NRD.md": quotes_nrd,
    "docs/RSP.md": quotes_rsp,
}

# Numbers that are not measurements of ours: what each one is.
NOT_MEASURED = {
    "README.md": {
        "0.05": "default of DATALOADER.MAX_SKIPPED_FRACTION",
        "75": "the RSP paper's claim (75% fewer FLOPs)",
        "30": "the NRD paper's claim (about 30% of DeepLabV3+'s decoder)",
        "95": "the confidence level of the toy comparisons (95%)",
    },
    "MODEL_ZOO.md": {},
    "docs/NRD.md": {
        "0.1": "dropout ratio (recipe)",
        "0.4": "auxiliary loss weight (recipe)",
        "0.5": "loss weight / flip probability (recipe)",
        "0.10": "mmseg version 0.10",
        "0.23": "mmseg version 0.23",
        "0.01": "learning rate (recipe)",
        "0.004": "learning rate (recipe)",
        "79.8": "paper's Cityscapes val mIoU, R-50",
        "80.7": "paper's Cityscapes val mIoU, R-101",
        "44.0": "authors' ADE20K mIoU",
        "52.3": "authors' PASCAL Context mIoU",
        "20": "the issue's decoder budget (20%)",
        "53": "the reference design's GMACs (issue)",
    },
    "docs/RSP.md": {
        "0.02": "init std of the positional bias (Swin)",
        "0.5": "loss weight / scale range (recipe)",
        "2.0": "scale range (recipe)",
    },
}


def _normalized(text):
    return re.sub(r"\s+", " ", text)


def _read(doc):
    with open(os.path.join(ROOT, doc)) as f:
        return f.read()


def _checked_elsewhere(doc, line):
    """Table rows that tests/test_config_costs.py or tests/test_nrd_recipe.py check."""
    if doc == "README.md":
        return bool(re.match(r"^\| `[^|]+\.yaml`", line))
    if doc == "MODEL_ZOO.md":
        return bool(re.match(r"^\| \[[^\]]+\]\(configs/(?!Toy/)", line))
    if doc == "docs/NRD.md":
        return bool(re.match(r"^\| .*\| `(MODEL|SOLVER|INPUT|TEST|DATALOADER)\.", line))
    return False


def _leftover_numbers(doc):
    text = _read(doc)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    lines = [line for line in text.splitlines() if not _checked_elsewhere(doc, line)]
    text = _normalized("\n".join(lines))
    for quote in QUOTES[doc]():
        text = text.replace(_normalized(quote), " ")
    text = re.sub(r"`[^`]*`", "", text)  # code: config keys, values, file names
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"[\w-]+#\d+", "", text)  # issue references
    return NUMBER.findall(text)


@pytest.mark.parametrize("doc", sorted(QUOTES))
def test_quotes_match_the_result_files(doc):
    text = _normalized(_read(doc))
    missing = [q for q in QUOTES[doc]() if _normalized(q) not in text]
    assert not missing, f"{doc} does not quote the result files; expected:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", sorted(QUOTES))
def test_no_number_without_a_source(doc):
    unexplained = sorted(set(_leftover_numbers(doc)) - set(NOT_MEASURED[doc]))
    assert not unexplained, (
        f"{doc} quotes numbers that no result file gives: {unexplained}. Quote a result file "
        "(and add the quote to tests/test_quoted_numbers.py) or, for a number that is not a "
        "measurement, list it in NOT_MEASURED with what it is."
    )


def test_the_check_can_fail(monkeypatch):
    """A hand-typed measurement and a stale quote are both caught."""
    original = _read

    def with_extra(doc):
        text = original(doc)
        return text + "\nThe head takes 12.3 ms.\n" if doc == "docs/RSP.md" else text

    monkeypatch.setattr(sys.modules[__name__], "_read", with_extra)
    assert "12.3" in _leftover_numbers("docs/RSP.md")
    stale = next(quotes_readme()).replace("PQ ", "PQ 1", 1)
    assert _normalized(stale) not in _normalized(original("README.md"))


@pytest.mark.parametrize("doc", sorted(QUOTES))
def test_not_measured_lists_only_numbers_the_document_has(doc):
    stale = sorted(set(NOT_MEASURED[doc]) - set(_leftover_numbers(doc)))
    assert not stale, f"NOT_MEASURED[{doc!r}] lists numbers it no longer has: {stale}"


def test_toy_accuracy_report_is_rendered_from_its_json():
    with open(os.path.join(RESULTS, "toy_accuracy.md")) as f:
        md = f.read()
    report = _json("toy_accuracy.json")
    assert md == _benchmark("toy_accuracy").render_markdown(report) + "\n"
    assert len(report["settings"]["seeds"]) >= 5
    assert set(report["models"]) == {"default", "highres"}
