"""Analysis on traced graphs: MACs per op and per stage, parameters, shapes, memory, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mfdsl.analysis.counting import count_macs_meta, macs_by_module, meta_model
from mfdsl.analysis.inspect import analyse, render_graph, render_table
from mfdsl.analysis.labels import human, mixer_label
from mfdsl.analysis.macs import count_graph
from mfdsl.analysis.memory import measure_saved
from mfdsl.analysis.trace import part_of, trace_aten
from mfdsl.cli import main
from mfdsl.ir import Call, ModelSpec, StageSpec, call, default_downsample
from mfdsl.lower import lower
from specs_py import paper_spec

# The paper table's MACs: FlopCounterMode's FLOPs / 2 agrees exactly.
PAPER_GMACS = {"caformer_s18": 4.107, "convformer_s18": 3.941, "poolformerv2_s12": 1.812}


def tiny_spec(mixers=("identity",), width: int = 8, img: int = 16, depth: int = 1,
              stages: int = 1, head=None) -> ModelSpec:
    st = []
    for i in range(stages):
        st.append(StageSpec(depth=depth, width=width * 2 ** i,
                            mixers=[m if isinstance(m, Call) else call(m) for m in mixers],
                            downsample=None if i == 0 else default_downsample()))
    return ModelSpec(name="tiny", img_size=(img, img), num_classes=10, stages=st,
                     head=head or call("linear"))


@pytest.fixture(scope="module")
def caformer_report():
    return analyse(paper_spec("caformer_s18"), batch=2, keep_graph=True)


@pytest.mark.parametrize("name", sorted(PAPER_GMACS))
def test_graph_macs_match_paper_and_flop_counter(name):
    spec = paper_spec(name)
    report = analyse(spec)
    assert report.macs == count_macs_meta(spec)
    assert round(report.macs / 1e9, 3) == PAPER_GMACS[name]


def test_randformer_macs_and_frozen_params():
    spec = paper_spec("randformer_s12")
    report = analyse(spec)
    assert report.macs == count_macs_meta(spec)
    # One frozen N x N matrix per block: N = 14*14 in stage 2 (6 blocks), 7*7 in stage 3.
    assert report.frozen_params == 6 * 196 ** 2 + 2 * 49 ** 2
    rows = {r.name: r for r in report.stages}
    assert rows["stage 2"].frozen_params == 6 * 196 ** 2
    assert rows["stage 0"].frozen_params == 0
    assert round(report.params / 1e6, 1) == 11.9


def test_per_stage_macs_agree_with_flop_counter_modules(caformer_report):
    spec = paper_spec("caformer_s18")
    ref = macs_by_module(meta_model(spec), spec)
    rows = {r.name: r for r in caformer_report.stages}
    assert rows["stem"].macs == ref["MetaFormer.stem"]
    assert rows["head"].macs == ref["MetaFormer.head"]
    for i in range(4):
        assert rows[f"stage {i}"].macs == ref[f"MetaFormer.stages.{i}"]
    assert sum(r.macs for r in caformer_report.stages) == caformer_report.macs
    assert "other" not in rows


def test_hand_computed_macs():
    # stem: 4x4 outputs * 8 ch * (3 * 7 * 7); MLP: 16 tokens * (8*32 + 32*8); head 8*10.
    r = analyse(tiny_spec(("identity",)))
    assert r.macs == 4 * 4 * 8 * 3 * 49 + 16 * (8 * 32 + 32 * 8) + 8 * 10
    # attention (head_dim 4 -> 2 heads): qkv 8->24, QK^T and AV 16*16*4 per head, proj 8->8.
    r2 = analyse(tiny_spec((call("attention", head_dim=4),)))
    attn = 16 * 8 * 24 + 2 * (16 * 16 * 4) * 2 + 16 * 8 * 8
    assert r2.macs - r.macs == attn
    # random mixing: an N x N matrix times N x C tokens.
    r3 = analyse(tiny_spec(("random",)))
    assert r3.macs - r.macs == 16 * 16 * 8


def test_pre_dispatch_graph_counts_the_same():
    spec = paper_spec("caformer_s18", depths=[1, 1, 2, 1])
    post = analyse(spec)
    pre = analyse(spec, pre_dispatch=True)
    assert pre.macs == post.macs == count_macs_meta(spec)
    model = meta_model(spec).eval()
    gm = trace_aten(model, torch.empty(1, 3, 224, 224, device="meta"), pre_dispatch=True)
    targets = {op.op for op in count_graph(gm)}
    assert "aten.scaled_dot_product_attention.default" in targets
    assert "aten.linear.default" in targets


def test_every_counted_op_has_a_module_path(caformer_report):
    parts = {part_of(op.module, 4) for op in caformer_report.ops}
    assert parts == {"stem", "stage 0", "stage 1", "stage 2", "stage 3", "head"}
    kinds = {op.op for op in caformer_report.ops}
    assert {"aten.convolution.default", "aten.mm.default", "aten.bmm.default"} <= kinds


def test_params_and_shapes_match_real_model():
    spec = tiny_spec((call("sepconv", kernel=3), "pooling"), width=8, img=64, depth=2,
                     stages=3)
    report = analyse(spec, batch=3)
    model = lower(spec).eval()
    assert report.params == sum(p.numel() for p in model.parameters())
    x = torch.randn(3, 3, 64, 64)
    maps = model.forward_feature_maps(x)
    rows = {r.name: r for r in report.stages}
    for i, fmap in enumerate(maps):
        assert rows[f"stage {i}"].out_shape == list(fmap.shape)
        assert rows[f"stage {i}"].params == sum(
            p.numel() for p in model.stages[i].parameters())
    assert rows["stem"].out_shape == [3, 8, 16, 16]
    assert rows["head"].out_shape == [3, 10]
    assert rows["stage 0"].mixer == "[sepconv(kernel=3), pooling]"
    assert rows["stage 0"].depth == 2


def test_activation_memory_scales_with_batch_and_dtype():
    spec = tiny_spec((call("sepconv", kernel=3),), width=16, img=32, stages=2)
    one, two, four = (analyse(spec, batch=b).memory for b in (1, 2, 4))
    half = analyse(spec, batch=4, dtype="bf16").memory
    assert one.activation_bytes > 0
    # Saved tensors are per-sample activations plus any batch-independent tensors a
    # layer derives from its weights in forward: affine in the batch size.
    per_sample = two.activation_bytes - one.activation_bytes
    assert per_sample > 0
    assert four.activation_bytes - two.activation_bytes == 2 * per_sample
    # Everything saved is bf16 except the fp32 loss input: close to half, never more.
    assert 0.45 * four.activation_bytes < half.activation_bytes < 0.55 * four.activation_bytes
    assert four.param_bytes == 2 * half.param_bytes


def test_memory_on_meta_matches_a_real_cpu_step():
    # The meta run must save what a real run saves (no sdpa here: CPU kernels differ).
    spec = tiny_spec((call("sepconv", kernel=3), "pooling", "random"), width=8, img=32,
                     depth=3, stages=2)
    meta = measure_saved(meta_model(spec), torch.empty(2, 3, 32, 32, device="meta"), 10)
    real_model = lower(spec, target="reference")  # the layers meta_model builds
    from mfdsl.analysis import memory as mem

    saved = []
    own = {id(p) for p in real_model.parameters()}

    def pack(t):
        if id(t) not in own:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = real_model.train()(torch.randn(2, 3, 32, 32))
        torch.nn.functional.cross_entropy(out, torch.zeros(2, dtype=torch.long))
    storages = {}
    params = {p.untyped_storage().data_ptr() for p in real_model.parameters()}
    for t in saved:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
    assert meta.total_bytes == sum(storages.values())
    assert meta.count == len(storages)
    assert mem.DTYPES["fp32"] is torch.float32


def test_report_json_has_the_agreed_keys(caformer_report):
    data = json.loads(caformer_report.to_json())
    assert {"name", "params", "frozen_params", "macs", "stages", "memory"} <= set(data)
    assert [s["name"] for s in data["stages"]] == ["stem", "stage 0", "stage 1", "stage 2",
                                                   "stage 3", "head"]
    for s in data["stages"]:
        assert {"name", "mixer", "depth", "width", "out_shape", "params", "frozen_params",
                "macs"} <= set(s)
    assert data["memory"]["batch"] == 2 and data["memory"]["dtype"] == "fp32"
    assert data["memory"]["activation_bytes"] > 0
    assert data["stages"][3]["mixer"] == "attention"
    assert data["stages"][3]["out_shape"] == [2, 320, 14, 14]


def test_table_and_graph_rendering(caformer_report):
    text = render_table(caformer_report)
    assert "4.107G" in text and "26.342M" in text
    lines = [ln for ln in text.splitlines() if ln.startswith(("stem", "stage", "head"))]
    assert len(lines) == 6
    # Aligned: the MACs column ends at the same place on every row.
    ends = {ln.index("M  ") for ln in lines if "M  " in ln}
    assert len(lines) and ends
    graph = render_graph(caformer_report.graph)
    assert "aten.convolution.default" in graph and "stages.2.blocks.0.token_mixer" in graph


def test_labels():
    st = StageSpec(mixers=[call("sepconv"), call("sepconv"), call("attention", head_dim=64)])
    assert mixer_label(st) == "[sepconv x2, attention(head_dim=64)]"
    assert human(4_106_941_440) == "4.107G"
    assert human(999) == "999"


# --- CLI ------------------------------------------------------------------------------

def test_cli_inspect_table_json_and_graph(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["inspect", "specs/poolformerv2_s12.yaml", "--batch", "2"])
    assert res.exit_code == 0, res.output
    assert "1.812G" in res.output and "stage 3" in res.output
    out = tmp_path / "graph.txt"
    res = runner.invoke(main, ["inspect", "specs/poolformerv2_s12.yaml", "--json",
                               "--img-size", "256", "--graph-out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["img_size"] == [256, 256]
    assert data["stages"][1]["out_shape"] == [1, 64, 64, 64]
    assert "aten.convolution.default" in out.read_text()


def test_cli_inspect_bad_spec_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nstages:\n  - {mixer: atention, depth: 2, width: 64}\n")
    res = CliRunner().invoke(main, ["inspect", str(bad)])
    assert res.exit_code == 2
    assert "error" in res.stderr and "Traceback" not in res.output + res.stderr
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "no such spec file" in res.stderr
    res = CliRunner().invoke(main, ["inspect", "specs/caformer_s18.yaml", "--img-size", "2"])
    assert res.exit_code == 2 and "would be empty" in res.stderr
