"""Every number in the documentation comes from a committed result file, or is listed with
what it is.

Read: README.md, INSTALL.md, GETTING_STARTED.md, MODEL_ZOO.md, CONTRIBUTING.md, docs/*.md
(docs/RELIABILITY.md, docs/TRAINING_AT_SCALE.md, ...), benchmarks/README.md, datasets/README.md and
benchmarks/results/*.md (a new doc under docs/ or a new report is read as soon as it exists).
Every number of every sentence and table cell counts, integers included; code (backticks, code
blocks), link targets, issue references and the numbers of numbered lists are not read.

A number is explained when it is

* part of a quote: a phrase formatted here from a result JSON (``QUOTES``; each must appear in
  its document), including the cost cells of the config tables (config_costs.json);
* for ``benchmarks/results/X.md``: a value of its own result files ``X*.json`` / ``X*.txt``, or
  the whole report equals what its script renders from the JSON (``RENDERED``);
* or part of a phrase listed in tests/listed_numbers.py with what it is (a paper's claim, a
  config value, a version, a name).

Anything else, such as a metric or a run time typed by hand, fails ``test_every_number_has_a_
source``; the mutation tests at the end show that it does.
"""

import glob
import importlib.util
import json
import os
import re

import pytest
from conftest import ROOT
from listed_numbers import EVERYWHERE, LISTED

RESULTS = os.path.join(ROOT, "benchmarks", "results")
# Every number: integers, decimals, versions (2.14.1), thousands (1,000), whatever follows it
# (14 hours, 11GB, 8x). Digits right after a letter or underscore are part of a name (P2, fp16,
# R_18, conv3) and are not numbers.
NUMBER = re.compile(r"(?<![A-Za-z_\d.,])\d+(?:,\d{3})*(?:\.\d+)*")


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
    acc = _json("toy_accuracy.json")
    m, n = acc["models"]["default"]["rsp_panoptic_fpn"], len(acc["settings"]["seeds"])
    pm = {k: f"{m[k]['mean']:.1f} ± {m[k]['std']:.1f}" for k in ("PQ", "PQ_th", "PQ_st", "mIoU")}
    yield f"over the {n} training seeds of"
    yield f"reaches PQ {pm['PQ']} (things {pm['PQ_th']}, stuff {pm['PQ_st']}) and mIoU {pm['mIoU']}"


def quotes_getting_started():
    rows = _json("panoptic_eval.json")["rows"]
    hot, base = rows["hotcoco"], rows["panopticapi_all"]
    yield (
        f"it took {hot['median_s']:.1f} s against panopticapi's {base['median_s']:.1f} s "
        f"(about {hot['speedup']:.0f}x) and used {hot['anon_increase_mib']:.0f} MiB of extra "
        f"memory against {base['anon_increase_mib']:.0f} MiB"
    )
    images = _json("panoptic_eval.json")["settings"]["images"]
    yield f"On {images:,} COCO-scale synthetic images"


def quotes_model_zoo():
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


def quotes_config_tables():
    """MODEL_ZOO.md's cost cells of the real-dataset configs (config_costs.json;
    tests/benchmarks/test_config_costs.py checks which row holds which)."""
    for r in _json("config_costs.json")["configs"].values():
        yield f"| {r['gflops_total']:.1f} | {r['params_m']:.2f} | – |"


QUOTES = {
    "README.md": quotes_readme,
    "GETTING_STARTED.md": quotes_getting_started,
    "MODEL_ZOO.md": quotes_model_zoo,
    "docs/NRD.md": quotes_nrd,
    "docs/RSP.md": quotes_rsp,
}


def documents():
    """Every document whose numbers are checked: new docs/*.md and result .md files included."""
    fixed = [
        "README.md",
        "INSTALL.md",
        "GETTING_STARTED.md",
        "MODEL_ZOO.md",
        "CONTRIBUTING.md",
        "benchmarks/README.md",
        "datasets/README.md",
    ]
    found = glob.glob(os.path.join(ROOT, "docs", "*.md"))
    found += glob.glob(os.path.join(RESULTS, "*.md"))
    return sorted(set(fixed) | {os.path.relpath(p, ROOT) for p in found})


def _read(doc):
    with open(os.path.join(ROOT, doc)) as f:
        return f.read()


def _normalized(text):
    """Whitespace collapsed; ``3x3`` / ``3 × 3`` spelled ``3 x 3`` so both numbers are seen."""
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"(\d)\s?[x×]\s?(?=\d)", r"\1 x ", text)


def _without(text, phrase):
    """``text`` with every occurrence of ``phrase`` blanked, unless it is part of a longer word
    or number (``R-50`` does not excuse ``R-501``)."""
    p = _normalized(phrase)
    before = r"(?<![\w.])" if p[:1].isalnum() else ""
    after = r"(?!\w|\.\d)" if p[-1:].isalnum() else ""
    return re.sub(before + re.escape(p) + after, " ", text)


def _source_values(doc):
    """For ``benchmarks/results/X.md``: every number its own result files (``X*.json``,
    ``X*.txt``, ``X*.csv``) hold, formatted as a report would (0-4 decimals; x1, x100 for
    percentages, /1e3, /1e6, /1e9 for k, M, G, /60 for minutes; scientific), and every number
    written in their strings."""
    if not doc.startswith("benchmarks/results/"):
        return set()
    stem = os.path.basename(doc)[: -len(".md")]
    values, found = [], set()
    for path in glob.glob(os.path.join(RESULTS, stem + "*")):
        if path.endswith((".json", ".txt", ".csv")):
            with open(path) as f:
                raw = f.read()
            found |= {n.replace(",", "") for n in NUMBER.findall(_normalized(raw))}
            if path.endswith(".json"):
                values += _leaves(json.loads(raw))
    for v in values:
        for x in (abs(v) * scale for scale in (1, 100, 1e-3, 1e-6, 1e-9, 1 / 60)):
            found |= {f"{x:.{d}f}" for d in range(5)}
            found |= {n for d in (1, 2) for n in NUMBER.findall(f"{x:.{d}e}")}  # 3.7e-05
    return found


def _leaves(node):
    if isinstance(node, dict):
        return [v for x in node.values() for v in _leaves(x)]
    if isinstance(node, list):
        return [v for x in node for v in _leaves(x)]
    return [node] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def unexplained_numbers(doc, text=None):
    """``[(number, context)]`` for each number of ``doc`` (or of ``text``, a copy of it) that is
    neither a quote of a result file nor listed in tests/listed_numbers.py."""
    text = _read(doc) if text is None else text
    text = re.sub(r"```.*?```", " ", text, flags=re.S)  # code blocks: commands, logs
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"(?m)^\s*\d+\. ", " ", text)  # numbered list items
    text = _normalized(text)
    quotes = list(QUOTES.get(doc, list)())
    if doc == "MODEL_ZOO.md":
        quotes += quotes_config_tables()
    for quote in quotes:
        text = text.replace(_normalized(quote), " ")
    listed = [p for ps in [*EVERYWHERE.values(), *LISTED.get(doc, {}).values()] for p in ps]
    for phrase in sorted(listed, key=len, reverse=True):  # the longest first
        text = _without(text, phrase)
    text = re.sub(r"`[^`]*`", " ", text)  # code: config keys and values, file names, commands
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"[\w/-]*#\d+", " ", text)  # issue references, anchors
    sources = _source_values(doc)
    return [
        (m.group(), text[max(0, m.start() - 40) : m.end() + 25])
        for m in NUMBER.finditer(text)
        if m.group().replace(",", "") not in sources
    ]


@pytest.mark.parametrize("doc", sorted(QUOTES))
def test_quotes_match_the_result_files(doc):
    text = _normalized(_read(doc))
    missing = [q for q in QUOTES[doc]() if _normalized(q) not in text]
    assert not missing, f"{doc} does not quote the result files; expected:\n" + "\n".join(missing)


def _render_config_costs():
    report, path = _json("config_costs.json"), os.path.join(RESULTS, ".config_costs.render.md")
    try:
        _benchmark("config_costs").write_markdown(
            path, list(report["configs"].values()), report["meta"]
        )
        with open(path) as f:
            return f.read()
    finally:
        os.remove(path)


# Reports that their script renders from the JSON alone: equal to the rendering, every number
# in them comes from the JSON (ratios included).
RENDERED = {
    "benchmarks/results/config_costs.md": _render_config_costs,
    "benchmarks/results/nrd_memory.md": lambda: _benchmark("nrd_memory").render_markdown(
        _json("nrd_memory.json")
    ),
    "benchmarks/results/toy_accuracy.md": lambda: (
        _benchmark("toy_accuracy").render_markdown(_json("toy_accuracy.json")) + "\n"
    ),
    "benchmarks/results/panoptic_speed.md": lambda: _benchmark("speed_summary").render(RESULTS),
    "benchmarks/results/rsp_profile.md": lambda: _benchmark("rsp_profile").render(
        _json("rsp_profile.json")
    ),
}


@pytest.mark.parametrize("doc", documents())
def test_every_number_has_a_source(doc):
    if doc in RENDERED:
        assert _read(doc) == RENDERED[doc](), f"{doc} is not what its script renders from the JSON"
        return
    unexplained = unexplained_numbers(doc)
    assert not unexplained, (
        f"{doc} has numbers that no result file gives and tests/listed_numbers.py does not list:\n"
        + "\n".join(f"  {n!r} in ...{c}..." for n, c in unexplained)
        + "\nQuote a result file (a quote in tests/test_quoted_numbers.py) or, for a number that "
        "is not a measurement, list it with its context and what it is in tests/listed_numbers.py."
    )


@pytest.mark.parametrize("doc", sorted(LISTED))
def test_listed_phrases_are_in_the_document(doc):
    text = _normalized(_read(doc))
    stale = [p for ps in LISTED[doc].values() for p in ps if _normalized(p) not in text]
    assert not stale, f"tests/listed_numbers.py lists phrases {doc} no longer has: {stale}"


def test_listed_phrases_carry_context():
    """A bare listed number would excuse the same number typed anywhere else in the document."""
    for doc, groups in [("(everywhere)", EVERYWHERE), *LISTED.items()]:
        for what, phrases in groups.items():
            for p in phrases:
                assert re.search(r"\d", p) and not re.fullmatch(r"[\d.,]+", p), (doc, what, p)


def _mutated(doc, old, new):
    text = _read(doc)
    assert old in text, f"{doc} no longer has {old!r}: update the mutation test"
    return text.replace(old, new, 1)


def test_a_hand_typed_metric_in_model_zoo_is_caught():
    row = "| [rsp_R_50_FPN_90k_bs16](configs/Cityscapes-SemanticSegmentation/"
    line = next(x for x in _read("MODEL_ZOO.md").splitlines() if x.startswith(row))
    cells = line.split("|")
    assert cells[5].strip() == "", "the Metric cell of the RSP Cityscapes row is no longer empty"
    cells[5] = " mIoU 80.1 "
    text = _mutated("MODEL_ZOO.md", line, "|".join(cells))
    assert unexplained_numbers("MODEL_ZOO.md", text) != unexplained_numbers("MODEL_ZOO.md")
    assert "80.1" in [n for n, _ in unexplained_numbers("MODEL_ZOO.md", text)]


def test_a_hand_typed_sentence_in_readme_is_caught():
    sentence = "A full Cityscapes schedule takes 14 hours and 11 GB per GPU on 8 GPUs."
    text = _read("README.md") + "\n" + sentence + "\n"
    caught = {n for n, _ in unexplained_numbers("README.md", text)}
    assert {"14", "11"} <= caught


def test_a_changed_number_in_a_result_report_is_caught():
    text = _read("benchmarks/results/toy_costs.md")
    n = NUMBER.findall(re.sub(r"`[^`]*`", "", text.split("|", 1)[1]))[0]
    changed = text.replace(n, "987.65", 1)
    assert "987.65" in [
        m for m, _ in unexplained_numbers("benchmarks/results/toy_costs.md", changed)
    ]


def test_toy_accuracy_report_is_rendered_from_its_json():
    with open(os.path.join(RESULTS, "toy_accuracy.md")) as f:
        md = f.read()
    report = _json("toy_accuracy.json")
    assert md == _benchmark("toy_accuracy").render_markdown(report) + "\n"
    assert len(report["settings"]["seeds"]) >= 5
    assert set(report["models"]) == {"default", "highres"}
